#!/usr/bin/env bash
# The GPU checks in one run: environment, `pytest -m gpu` (tests/test_gpu.py) and the inference benchmark on CUDA.
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [--shared DIR] [--quick] [--allow-cpu] [--settings] [--no-tests] [--no-bench]
#   bash benchmarks/gpu_check.sh --pack-shared DEST [--shared SRC]
#
# OUTDIR (default: $OUT when set, else gpu_check_out/) receives at most 6 files: summary.md (what ran, how long,
# pass/fail, the benchmark table), env.txt (nvidia-smi, Python/torch/CUDA/cuDNN versions, the GPU), pytest_gpu.log,
# bench_inference.log and, with --settings, bench_settings.log. The exit status is 0 when every step passed, 1 when
# one failed, 2 for a usage error and 3 when there is no CUDA device (unless --allow-cpu).
#
# --shared DIR: the reference-data folder (real images, CamVid, the stand-in's make_weights.py); default
#   $MSEG_SHARED, else ../shared, else ./shared. Exported as MSEG_SHARED for the tests (tests/conftest.py).
# --quick: a short benchmark (360_ss, one image, faithful and fast, one run each) instead of 360_ss, 360_ms and
#   1080_ss on two images, median of 3.
# --allow-cpu: without CUDA, run what can run on the CPU (the gpu tests then skip; the benchmark runs on the CPU):
#   checks this script end to end on a machine without a GPU (with --quick, a few minutes).
# --settings: also the benchmark's per-setting table (W48 timings on the device; agreement of the compact model,
#   computed on the CPU: several minutes).
# Environment: PYTHON (default python3); GPU_CHECK_TEST_TIMEOUT and GPU_CHECK_BENCH_TIMEOUT, each step's limit in
#   seconds (240 and 300; expected on an H200: 2-3 minutes each, the W48 stand-in's first build on the CPU included);
#   GPU_CHECK_BENCH_ARGS, more options for benchmarks/inference.py (e.g. "--paths faithful fast fastest").
#
# A GPU machine cannot reach a network and may not see ../shared. Before the run, on a machine that has it:
#   bash benchmarks/gpu_check.sh --pack-shared shared     # about 16 MB: the part of ../shared the checks read
# writes ./shared (git-ignored through .git/info/exclude) to take along with the checkout; on the GPU machine:
#   bash benchmarks/gpu_check.sh "$OUT" --shared shared
# The package is used from this checkout: installed with `pip install -e . --no-deps` (offline) only when it is not
# importable, and put on PYTHONPATH when another copy would be imported. Nothing is downloaded.
set -euo pipefail

CALLER=$PWD
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python

die() { echo "gpu_check: $*" >&2; exit 2; }
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
# A path given on the command line or in the environment, relative to where the script was started.
abspath() { case $1 in /*) echo "$1" ;; "") ;; *) echo "$CALLER/$1" ;; esac; }

# ------------------------------------------------------------------------------------------------- arguments
OUTDIR="" SHARED_DIR="${MSEG_SHARED:-}" PACK="" QUICK=0 ALLOW_CPU=0 SETTINGS=0 TESTS=1 BENCH=1
while (($#)); do
    case $1 in
        --shared) (($# >= 2)) || die "--shared needs a folder"; SHARED_DIR=$2; shift ;;
        --shared=*) SHARED_DIR=${1#*=} ;;
        --pack-shared) (($# >= 2)) || die "--pack-shared needs a destination folder"; PACK=$2; shift ;;
        --quick) QUICK=1 ;;
        --allow-cpu) ALLOW_CPU=1 ;;
        --settings) SETTINGS=1 ;;
        --no-tests) TESTS=0 ;;
        --no-bench) BENCH=0 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [[ -z $OUTDIR ]] || die "one output folder only (got $OUTDIR and $1)"; OUTDIR=$1 ;;
    esac
    shift
done

find_shared() {
    local candidate
    for candidate in "$SHARED_DIR" "$REPO/../shared" "$REPO/shared"; do
        candidate=$(abspath "$candidate")
        if [[ -n $candidate && -d $candidate/data ]]; then
            (cd "$candidate" && pwd -P)
            return
        fi
    done
    [[ -z $SHARED_DIR ]] || die "--shared $SHARED_DIR: no data/ folder in it"
}

# ------------------------------------------------------------------------------------------------- --pack-shared
# The files the checks read: the demo photos, CamVid's lists with the images at the lines the tests and the
# benchmark use (train: the first 8, every 15th and every 33rd, the stand-in's; val: the first 10 and every 10th),
# and the stand-in model's recipe (make_weights.py and the W48 key list). The lists stay whole, so the benchmark's
# stand-in is the one it builds from the full folder; the other lines' images are left out.
pack_shared() {
    local src dest image label n=0
    dest=$(abspath "$1")
    src=$(find_shared)
    [[ -n $src && -f $src/data/camvid11/train.txt ]] || die "no reference data to pack (give --shared SRC)"
    mkdir -p "$dest"
    dest=$(cd "$dest" && pwd -P)
    [[ $dest != "$src" ]] || die "--pack-shared: the destination is the source folder"
    for image in "$src"/data/demo/*.jpg "$src"/data/demo/*.png "$src"/data/demo/README.md \
        "$src"/data/camvid11/train.txt "$src"/data/camvid11/val.txt "$src"/data/camvid11/README.md \
        "$src"/reference/tools/make_weights.py "$src"/reference/models/hrnet_w48_keys.json; do
        if [[ -f $image ]]; then install -D -m 0644 "$image" "$dest/${image#"$src"/}"; fi
    done
    while read -r image label; do
        install -D -m 0644 "$src/data/camvid11/$image" "$dest/data/camvid11/$image"
        install -D -m 0644 "$src/data/camvid11/$label" "$dest/data/camvid11/$label"
        n=$((n + 1))
    done < <(awk 'NF && (NR <= 8 || (NR - 1) % 15 == 0 || (NR - 1) % 33 == 0)' "$src/data/camvid11/train.txt"
        awk 'NF && (NR <= 10 || (NR - 1) % 10 == 0)' "$src/data/camvid11/val.txt")
    cat >"$dest/README.txt" <<EOF
A partial copy of $src for benchmarks/gpu_check.sh, made by 'bash benchmarks/gpu_check.sh --pack-shared'.
CamVid's train.txt and val.txt are whole but only $n of their images are here (the lines the GPU tests and the
inference benchmark read): a full test run must not use this folder.
EOF
    # Inside this checkout: keep it out of git (and of ruff) without touching .gitignore.
    if [[ $dest == "$REPO"/* ]] && git rev-parse --git-dir >/dev/null 2>&1 && ! git check-ignore -q "$dest/"; then
        local exclude
        exclude=$(git rev-parse --git-path info/exclude)
        mkdir -p "$(dirname "$exclude")"
        echo "/${dest#"$REPO"/}/" >>"$exclude"
        echo "gpu_check: added /${dest#"$REPO"/}/ to $exclude"
    fi
    echo "gpu_check: packed $n CamVid images, the demo photos and the stand-in recipe from $src into $dest" \
        "($(du -sh "$dest" | cut -f1))"
}

if [[ -n $PACK ]]; then
    pack_shared "$PACK"
    exit 0
fi

# ------------------------------------------------------------------------------------------------- set-up
OUTDIR=$(abspath "${OUTDIR:-${OUT:-gpu_check_out}}")
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY=$OUTDIR/summary.md
export PYTHONUNBUFFERED=1
CORES=$(nproc 2>/dev/null || echo 4)
SHARED=$(find_shared)
[[ -z $SHARED ]] || export MSEG_SHARED=$SHARED

# The package from this checkout, never from a network. Looked for from outside the checkout: `python -c` and
# `python -m` find ./mseg_semantic in the working directory, a script in benchmarks/ does not.
package_home() {
    local code="import mseg_semantic, pathlib; print(pathlib.Path(mseg_semantic.__file__).resolve().parents[1])"
    (cd / && "$PY" -c "$code" 2>/dev/null) || true
}
if [[ -z $(package_home) ]]; then
    echo "gpu_check: mseg_semantic is not importable: pip install -e . --no-deps (offline)"
    "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . ||
        echo "gpu_check: the editable install failed"
fi
if [[ $(package_home) != "$REPO" ]]; then
    echo "gpu_check: using mseg_semantic from $REPO through PYTHONPATH"
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi

START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if COMMIT=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null || COMMIT+=" (with local changes)"
else
    COMMIT="unknown (not a git checkout)"
fi
{
    echo "# gpu_check $START"
    echo
    echo "commit: $COMMIT"
    echo
    echo '```'
    if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 || true; else echo "nvidia-smi: not found"; fi
    echo
    "$PY" - <<'EOF' 2>&1 || true
import os, platform, sys
import torch
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
      f"{os.cpu_count()} CPU cores, {platform.platform()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
              f"{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as exc:  # a build without NCCL
        nccl = f"unavailable ({exc})"
    print(f"NCCL {nccl}; TF32 convolutions {torch.backends.cudnn.allow_tf32}, "
          f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
else:
    print("CUDA: not available")
import mseg_semantic
print(f"mseg_semantic {mseg_semantic.__version__} from {os.path.dirname(mseg_semantic.__file__)}")
EOF
    echo "shared: ${SHARED:-none found}"
    echo '```'
} >"$OUTDIR/env.txt"
cat "$OUTDIR/env.txt"

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
elif ((ALLOW_CPU)); then
    DEVICE=cpu
    echo "gpu_check: no CUDA device; --allow-cpu: the gpu tests skip and the benchmark runs on the CPU"
else
    {
        cat "$OUTDIR/env.txt"
        echo
        echo "**No CUDA device**: nothing was run (--allow-cpu runs the script on the CPU)."
    } >"$SUMMARY"
    echo "gpu_check: no CUDA device is available to PyTorch; nothing run (pass --allow-cpu to run on the CPU)" >&2
    exit 3
fi
[[ -n $SHARED ]] || echo "gpu_check: no reference data (--shared): tests needing it skip, the benchmark is left out" >&2

# ------------------------------------------------------------------------------------------------- the steps
# Each step runs under its time limit (seconds), its output in OUTDIR/NAME.log. The W48 stand-in the benchmark
# measures is built on the CPU the first time on a machine and cached in ~/.cache/mseg_semantic.
STEPS=() FAILED=0
step() {
    local name=$1 limit=$2 started=$SECONDS rc
    shift 2
    echo
    echo "== $name: $*"
    set +e
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    local took=$((SECONDS - started)) status=passed
    if ((rc == 124 || rc == 137)); then
        status="timed out after $limit s"
    elif ((rc != 0)); then
        status="failed (exit $rc)"
    fi
    ((rc == 0)) || FAILED=1
    STEPS+=("| $name | $status | $took |")
    echo "== $name: $status in $took s"
}

if ((TESTS)); then
    # The tests' CPU references use every core; their temporary folders stay outside OUTDIR.
    export MSEG_TEST_THREADS=${MSEG_TEST_THREADS:-$CORES}
    step pytest_gpu "${GPU_CHECK_TEST_TIMEOUT:-240}" "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider tests/test_gpu.py
fi

if ((BENCH)) && [[ -n $SHARED ]]; then
    bench=("$PY" benchmarks/inference.py --device "$DEVICE" --shared "$SHARED" --threads "$CORES" --no-memory)
    if ((QUICK)); then
        bench+=(--images "$SHARED/data/demo/bike_horses.jpg" --presets 360_ss --paths faithful fast
            --warmup 0 --repeats 1)
    else
        bench+=(--images "$SHARED/data/demo/bike_horses.jpg"
            "$SHARED/data/demo/PrivateLakefrontResidenceWoodstockGA_0000893.jpg"
            --presets 360_ss 360_ms 1080_ss --warmup 1 --repeats 3)
    fi
    read -r -a extra <<<"${GPU_CHECK_BENCH_ARGS:-}"
    bench+=(${extra[@]+"${extra[@]}"})
    step bench_inference "${GPU_CHECK_BENCH_TIMEOUT:-300}" "${bench[@]}" --tables paths
    if ((SETTINGS)); then
        step bench_settings "${GPU_CHECK_BENCH_TIMEOUT:-300}" "${bench[@]}" --tables settings
    fi
fi

# ------------------------------------------------------------------------------------------------- summary
{
    echo "# GPU checks, $START (device $DEVICE$( ((QUICK)) && echo ', --quick'))"
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
    printf '%s\n' ${STEPS[@]+"${STEPS[@]}"}
    if [[ -f $OUTDIR/pytest_gpu.log ]]; then
        echo
        echo "pytest: $(grep -E '(passed|failed|skipped|error)' "$OUTDIR/pytest_gpu.log" | tail -n 1)"
        # The agreement figures the tests print (mean and worst image).
        grep -E '^(fp32|fp16|bf16|fast|batch_windows|predict_batch)[^:]*:' "$OUTDIR/pytest_gpu.log" |
            sed 's/^/    /' || true
    fi
    for name in bench_inference bench_settings; do
        if [[ -f $OUTDIR/$name.log ]]; then
            echo
            echo "## $name"
            echo
            grep -E '^(model|machine|\|)' "$OUTDIR/$name.log" || echo "(no table: see $name.log)"
        fi
    done
    echo
    cat "$OUTDIR/env.txt"
} >"$SUMMARY"
echo
echo "gpu_check: summary in $SUMMARY"
exit "$FAILED"
