#!/usr/bin/env bash
# One command for a person with a CUDA GPU: installs what the GPU tests need, runs the tests marked `gpu`
# (tests/gpu/test_gpu_check.py) and prints one table. Without a GPU it says what it would have run and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { bash scripts/setup.sh || exit 1; }
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: no CUDA GPU here. It would run: bf16 vs fp32 loss parity (SFT, DPO), QLoRA DPO steps,"
    echo "packed vs padded log-probs on GPU attention, FSDP2 under torchrun (2+ GPUs), DeepSpeed ZeRO-2/3 through"
    echo "the shipped accelerate configs, DPO/SFT tokens/s and MFU vs TRL (SmolLM2-135M, a random ~1.1B Llama),"
    echo "vLLM generate (if installed)."
    exit 0
fi
"$PY" -m pip install -q bitsandbytes || echo "gpu-check: bitsandbytes did not install: the QLoRA row will skip"
OUT=$(mktemp)
POSTTRAIN_GPU_CHECK_OUT=$OUT timeout 600 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider
rc=$?
"$PY" - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"\n{'check':45s} {'ok':4s} numbers")
for r in rows:
    rest = {k: v for k, v in r.items() if k not in ("check", "ok")}
    print(f"{r['check']:45s} {'yes' if r['ok'] else 'NO':4s} {json.dumps(rest)}")
PYEOF
exit $rc
