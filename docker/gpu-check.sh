#!/usr/bin/env bash
# cxr-fast's GPU check on a GPU host that has PyTorch but no internet (an air-gapped node, a bare cloud image).
#
#   docker/gpu-check.sh OUT_DIR [gpu-check flags...]      # run from the repository root
#
# Installs this checkout without touching the network, then runs `cxr-fast gpu-check --out OUT_DIR` (its
# default budget fits one 10-minute command on a fresh H100/H200, phantom and stores included; pass
# --budget-s to change it). Everything it measured is in OUT_DIR/gpu-check.json.
#
# DALI and every wheel it imports that the host lacks are listed in docker/dali-wheels.txt (DALI, nvImageCodec,
# nvCOMP, nvJPEG's libnvjpeg.so.13 for the `mixed` decoder, astunparse, gast, six, optree, ...); fetch them where
# there is internet with docker/fetch-wheels.sh into $WHEELS (default .whl/), as whole .whl files or split where
# a copy limits file sizes (`NAME.whl.part-aa`, ...): the parts of each wheel are joined in name order. Any
# listed wheel that is missing is named here; gpu-check then records DALI's import error (one line) and which
# JPEG decoder really ran. The other dependencies (numpy, rich, numba, pillow, pyyaml, scipy, scikit-learn,
# matplotlib) must already be there, as on most PyTorch images.
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
    missing=()
    while read -r spec; do
        name=$(echo "${spec%%==*}" | tr 'A-Z-' 'a-z_')
        compgen -G "$wheels/$name-*.whl" > /dev/null || missing+=("${spec%%==*}")
    done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$(dirname "$0")/dali-wheels.txt")
    [ ${#missing[@]} -eq 0 ] || echo "missing from $wheels (docker/dali-wheels.txt): ${missing[*]}; DALI may not import"
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
exec "$python" -m cxr_fast.cli gpu-check --out "$out" "$@"
