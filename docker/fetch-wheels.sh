#!/usr/bin/env bash
# Download, where there is internet, the wheels docker/gpu-check.sh installs offline on a GPU host:
#
#   docker/fetch-wheels.sh [DIR]        # default .whl/; PY=3.12 for the GPU host's Python (default: this one's)
#
# Every wheel in docker/dali-wheels.txt, for x86-64 Linux, without dependencies (the list is complete on
# purpose). Wheels over 60 MiB are split (`NAME.whl.part-aa`, ...) for copies that limit file sizes;
# gpu-check.sh joins them.
set -euo pipefail

dir=${1:-.whl}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
py=${PY:-$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
mapfile -t wheels < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/dali-wheels.txt")
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
mkdir -p "$dir"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    "${platforms[@]}" -d "$dir" "${wheels[@]}"
for whl in "$dir"/*.whl; do
    if [ "$(stat -c %s "$whl")" -gt $((60 * 1024 * 1024)) ]; then
        split -b 60M "$whl" "$whl.part-" && rm "$whl"
        echo "split $whl into $(ls "$whl".part-* | wc -l) parts"
    fi
done
echo "fetched ${#wheels[@]} wheel(s) for Python $py into $dir"
