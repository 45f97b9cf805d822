#!/usr/bin/env bash
# Builds the real Kubernetes components the cluster tests run against:
# kube-apiserver and kube-controller-manager 1.20.2 from Debian's `kubernetes`
# source package, with Debian's Go. Installs etcd-server and kubectl too.
#
# Everything is cached outside the repository, under $KRT_CLUSTER_CACHE
# (default ~/.cache/kruntimes/k8s-1.20.2); a second run only checks the cache.
# Prints the directory holding the binaries on its last line.
set -euo pipefail

cache="${KRT_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kruntimes/k8s-1.20.2}"
bin="$cache/bin"
log() { printf 'cluster-build: %s\n' "$*" >&2; }

need_pkgs=()
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v kubectl >/dev/null || need_pkgs+=(kubernetes-client)
if [[ ! -x "$bin/kube-apiserver" || ! -x "$bin/kube-controller-manager" ]]; then
  command -v go >/dev/null || need_pkgs+=(golang-go)
  command -v dpkg-source >/dev/null || need_pkgs+=(dpkg-dev)
  command -v rsync >/dev/null || need_pkgs+=(rsync)
  command -v make >/dev/null || need_pkgs+=(make)
  [[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] || need_pkgs+=(golang-github-modern-go-reflect2-dev)
  [[ -d /usr/share/gocode/src/github.com/json-iterator/go ]] || need_pkgs+=(golang-github-json-iterator-go-dev)
fi
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

# Only the two binaries are kept: the unpacked source, Go's build cache and
# the deb-src lists take about 2.3 GB, which the Rust build that follows needs
# more (CI once ran out of disk with them left behind).
prune() { rm -rf "${cache:?}/src" "$cache/gocache" "$cache/apt"; }

if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" ]]; then
  prune
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
src_root="$cache/src"
if [[ ! -d "$src_root/done" ]]; then
  rm -rf "$src_root" "$cache/apt"
  mkdir -p "$src_root" "$cache/apt/lists/partial" "$cache/apt/sources.list.d"
  # deb-src entries derived from the machine's own Debian sources: same URIs,
  # suites and keys, `Types: deb-src`. No mirror is named here.
  found=0
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    if grep -qi 'debian' "$f"; then
      sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$cache/apt/sources.list.d/$(basename "$f")"
      found=1
    fi
  done
  if [[ -f /etc/apt/sources.list ]] && grep -qE '^deb ' /etc/apt/sources.list; then
    grep -E '^deb ' /etc/apt/sources.list | sed -E 's/^deb /deb-src /' >"$cache/apt/sources.list"
    found=1
  else
    : >"$cache/apt/sources.list"
  fi
  ((found)) || { log "no Debian apt sources found to derive deb-src entries from"; exit 1; }
  aptopts=(-o "Dir::Etc::SourceList=$cache/apt/sources.list"
           -o "Dir::Etc::SourceParts=$cache/apt/sources.list.d"
           -o "Dir::State::Lists=$cache/apt/lists"
           -o "APT::Get::List-Cleanup=0")
  log "fetching the kubernetes source package"
  apt-get "${aptopts[@]}" update -qq
  (cd "$src_root" && apt-get "${aptopts[@]}" source -qq kubernetes >&2)
  mkdir "$src_root/done"
fi
k8s=$(find "$src_root" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
[[ -n "$k8s" ]] || { log "the kubernetes source package did not unpack"; exit 1; }

# reflect2 1.0.1 and json-iterator 1.1.10 crash under Go >= 1.18; use Debian's.
for p in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  if [[ ! -f "$k8s/vendor/$p/.krt-replaced" ]]; then
    log "replacing vendor/$p with Debian's"
    rm -rf "${k8s:?}/vendor/$p"
    cp -rL "/usr/share/gocode/src/$p" "$k8s/vendor/$p"
    find "$k8s/vendor/$p" -name '*_test.go' -delete
    touch "$k8s/vendor/$p/.krt-replaced"
  fi
done

log "building kube-apiserver and kube-controller-manager (several minutes, once)"
(
  cd "$k8s"
  rm -rf _output
  export GO111MODULE=off GOFLAGS=-mod=vendor GOCACHE="$cache/gocache" KUBE_BUILD_PLATFORMS=linux/amd64
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
)
mkdir -p "$bin"
for b in kube-apiserver kube-controller-manager; do
  cp "$(find "$k8s/_output" -type f -name "$b" -perm -u+x | head -1)" "$bin/$b.tmp"
  mv "$bin/$b.tmp" "$bin/$b"
done
prune
log "built into $bin"
echo "$bin"
