#!/usr/bin/env bash
# The field's own tools beside tritune (bench/peers.py, docs/benchmarks.md#peers), installed under ./.peers:
#   .peers/bin/perf_analyzer    perf_analyzer 2.51.0, from the tritonclient 2.51.0 manylinux1 wheel (newer wheels'
#                               binaries need glibc 2.38; PyPI's `perf-analyzer` is an empty 0.1.0 placeholder).
#                               A wrapper puts libcudart (PyPI nvidia-cuda-runtime-cu12) on LD_LIBRARY_PATH: the
#                               binary links it but uses no GPU.
#   .peers/bin/model-analyzer   Model Analyzer 1.58.0 in a venv of its own (it pins its own tritonclient and pulls the
#                               placeholder perf-analyzer, so it stays out of tritune's .venv).
# and, from the OS's packages, libb64-0d (perf_analyzer links it) and the two proxies measured beside Caddy
# (haproxy, nginx-light). Not part of `make test`.
set -euo pipefail
PEERS=${PEERS:-.peers}
PYTHON=${PYTHON:-python3}
PA_VERSION=2.51.0
MA_VERSION=1.58.0
CUDART=nvidia-cuda-runtime-cu12==12.9.79

need_apt=()
[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || ldconfig -p 2>/dev/null | grep -q 'libb64.so.0d' || need_apt+=(libb64-0d)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "error: ${need_apt[*]} missing and this user cannot install them: run 'apt-get install ${need_apt[*]}' as root" >&2
    exit 1
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "error: install ${need_apt[*]} with your OS's package manager" >&2; exit 1; }
  echo "installing ${need_apt[*]} (apt-get)"
  $SUDO apt-get update -qq
  # policy-rc.d-free images start no services; nginx's postinst only warns when it cannot.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

mkdir -p "$PEERS/bin" "$PEERS/libexec" "$PEERS/dl"
if [ ! -x "$PEERS/venv/bin/model-analyzer" ]; then
  echo "installing Model Analyzer $MA_VERSION into $PEERS/venv"
  "$PYTHON" -m venv "$PEERS/venv"
  "$PEERS/venv/bin/pip" install -q --upgrade pip
  "$PEERS/venv/bin/pip" install -q "triton-model-analyzer==$MA_VERSION" "$CUDART"
fi
if [ ! -x "$PEERS/libexec/perf_analyzer" ]; then
  echo "installing perf_analyzer $PA_VERSION (from the tritonclient $PA_VERSION wheel)"
  "$PEERS/venv/bin/pip" download -q "tritonclient==$PA_VERSION" --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 -d "$PEERS/dl"
  "$PEERS/venv/bin/python" - "$PEERS" "$PA_VERSION" <<'PY'
import sys, zipfile, pathlib
peers, version = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next((peers / "dl").glob(f"tritonclient-{version}-*manylinux1_x86_64.whl"))
member = f"tritonclient-{version}.data/data/bin/perf_analyzer"
target = peers / "libexec" / "perf_analyzer"
with zipfile.ZipFile(wheel) as z:
    target.write_bytes(z.read(member))
target.chmod(0o755)
PY
fi
cudart=$("$PEERS/venv/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')
root=$(cd "$PEERS" && pwd)
cat > "$PEERS/bin/perf_analyzer" <<SH
#!/bin/sh
LD_LIBRARY_PATH="$cudart\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/libexec/perf_analyzer" "\$@"
SH
chmod +x "$PEERS/bin/perf_analyzer"
ln -sf "$root/venv/bin/model-analyzer" "$PEERS/bin/model-analyzer"
"$PEERS/bin/perf_analyzer" --version
echo "Model Analyzer $("$PEERS/bin/model-analyzer" --version 2>/dev/null | tail -1)"
echo "haproxy: $(/usr/sbin/haproxy -v 2>/dev/null | head -1 | cut -d' ' -f3 || haproxy -v | head -1)"
echo "nginx: $( (/usr/sbin/nginx -v || nginx -v) 2>&1 | head -1)"
