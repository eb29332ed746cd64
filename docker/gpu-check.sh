#!/usr/bin/env bash
# cxr-fast's GPU check on a GPU host that has PyTorch but no internet (an air-gapped node, a bare cloud image).
#
#   docker/gpu-check.sh OUT_DIR [gpu-check flags...]      # run from the repository root
#
# Installs this checkout without touching the network, then runs `cxr-fast gpu-check --out OUT_DIR`
# (default budget 420 s; pass --budget-s to change it). Everything it measured is in OUT_DIR/gpu-check.json.
#
# Wheels the host lacks (DALI: nvidia-dali-cuda130, nvidia-nvimgcodec-cu13, nvidia-libnvcomp-cu13) may be
# put in $WHEELS (default .whl/) as whole .whl files, or split where a copy limits file sizes
# (`split -b 60M NAME.whl NAME.whl.part-`): the parts of each wheel are joined in name order. Without DALI
# the check still runs and reports DALI as skipped. The other dependencies (numpy, rich, numba, pillow,
# pyyaml, scipy, scikit-learn, matplotlib) must already be there, as on most PyTorch images.
set -euo pipefail

out=${1:?usage: docker/gpu-check.sh OUT_DIR [gpu-check flags...]}
shift
wheels=${WHEELS:-.whl}
site=${SITE:-/tmp/cxr-fast-site}
python=${PYTHON:-python3}

if [ -d "$wheels" ]; then
    for first in "$wheels"/*.whl.part-aa; do
        [ -e "$first" ] || continue
        whole=${first%.part-aa}
        cat "$whole".part-* > "$whole.tmp" && mv "$whole.tmp" "$whole"
        echo "joined $(ls "$whole".part-* | wc -l) parts into $whole"
    done
    if compgen -G "$wheels/*.whl" > /dev/null; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$wheels"/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        echo "installed $(ls "$wheels"/*.whl | wc -l) wheel(s) into $site"
    fi
fi

# No build isolation: an isolated build would try to download setuptools.
"$python" -m pip install -q --no-deps --no-build-isolation -e .
export PYTHONUNBUFFERED=1
case " $* " in *" --budget-s "* | *" --budget-s="*) budget=() ;; *) budget=(--budget-s 420) ;; esac
exec "$python" -m cxr_fast.cli gpu-check --out "$out" "${budget[@]}" "$@"
