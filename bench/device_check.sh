#!/usr/bin/env bash
# The GPU checks in one run of a few minutes, for a GPU machine that has PyTorch, torchaudio,
# transformers and pytest but no network, no FFmpeg and none of genretag's other dependencies.
#
#   here:   python bench/device_kit.py            # wheels + FFmpeg's libraries into .whl/ (31 MiB)
#   there:  bash bench/device_check.sh            # from the repository root, with .whl/ carried along
#
# Steps, each under its own time limit (570 s in all, for one 600 s call), each log written to $OUT
# (default ./device-out):
#   versions  what runs there: torch, CUDA device, transformers, torchcodec + the FFmpeg it loaded
#   scan      bench/scan_bench.py per model: B (HF pipeline per window, first B_TRACKS tracks) and C
#             (genretag scan) on TRACKS tracks made of DISTINCT generated ones, WORKERS decoders
#   decode    bench/decode_throughput.py: the scan's decode stage alone on 4 and WORKERS threads, on
#             the scan's library, and the single-thread cost per format: the ceiling decoding sets
#   infer     bench/infer_throughput.py: model-phase windows/s per batch size and precision, wav2vec2
#             with transformers' convolutions and with the time-major products, and the operators
#             that take the most GPU time in the largest batch (torch.profiler)
#   gpu-tests pytest -m gpu: musicnn against the TensorFlow reference on CUDA, the transformers
#             classifiers and a whole scan on CUDA against the CPU
# Settings (environment): KIT=.whl DEVICE=cuda TRACKS=2000 DISTINCT=24 B_TRACKS=20 WORKERS=16
#   MODELS="wav2vec2-base builtin:musicnn-msd" BATCHES="16 64" STEPS="versions scan decode infer gpu-tests"
#   PYTHON=python3
set -u
KIT=${KIT:-.whl}
OUT=${OUT:-device-out}
DEVICE=${DEVICE:-cuda}
TRACKS=${TRACKS:-2000}
DISTINCT=${DISTINCT:-24}
B_TRACKS=${B_TRACKS:-20}
WORKERS=${WORKERS:-16}
MODELS=${MODELS:-wav2vec2-base builtin:musicnn-msd}
BATCHES=${BATCHES:-16 64}
STEPS=${STEPS:-versions scan decode infer gpu-tests}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)

"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
    "$KIT"/*.whl || exit 1
tar -xJf "$KIT/ffmpeg-libs.tar.xz" -C "$WORK" || exit 1
# The repository first, then the kit: the machine's own torch and transformers stay in use.
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$WORK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 GENRETAG_HOME="$WORK/home" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME SECONDS COMMAND...: run it under a limit, keep its log, say how it ended
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return ;; esac
    echo "== $name"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -v -i -E "warn|^\s*$|it/s\]" "$OUT/$name.log" | tail -n 40
    echo "== $name: exit $rc after $((SECONDS - started)) s"
}

step versions 30 "$PY" -c "
import sys, torch, transformers, torchcodec
from torchcodec.decoders import AudioDecoder
print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__,
      'torchcodec', torchcodec.__version__)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (CPU only)')
maps = open('/proc/self/maps').read().split()
print('ffmpeg', sorted({word.rsplit('/', 1)[-1] for word in maps if 'libavcodec' in word}))
"
for model in $MODELS; do  # the scan first: it is what the GPU target is about
    step scan 135 "$PY" bench/scan_bench.py --device "$DEVICE" --model "$model" --workers "$WORKERS" \
        --tracks "$TRACKS" --distinct "$DISTINCT" --skip-a --b-tracks "$B_TRACKS" --library "$WORK/library"
    mv "$OUT/scan.log" "$OUT/scan-${model//[:\/]/-}.log" 2>/dev/null
done
step decode 60 "$PY" bench/decode_throughput.py --workers 4 "$WORKERS" --tracks 192 --distinct 12 \
    --library "$WORK/library"
step infer 130 "$PY" bench/infer_throughput.py --device "$DEVICE" --models $MODELS --batches $BATCHES \
    --precisions bf16 fp32 --feature-encoders auto time-major --seconds 3 --profile
step gpu-tests 80 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
rm -rf "$WORK"
