"""Static checks of the Dockerfile (no Docker engine here): what it copies exists, it is multi-stage with a
CUDA runtime that matches the installed onnxruntime-gpu and a CPU variant, it installs the serving
dependencies only, runs `rmserve serve` as a non-root user on the service's ports, with a health check."""

import re
from pathlib import Path

import tomllib

from rmserve.cli import build_parser
from rmserve.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Instructions with their continuation lines joined.
LOGICAL = re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines()


def instructions(name):
    return [line.split(None, 1)[1] for line in LOGICAL if line.startswith(name + " ")]


def arg_default(name):
    return re.search(rf"^ARG {name}=(\S+)", DOCKERFILE, re.M).group(1)


def test_cuda_base_matches_the_onnxruntime_gpu_build():
    from onnxruntime.capi import build_and_package_info as ort_build

    assert ort_build.package_name == "onnxruntime-gpu"
    ort_version = arg_default("ORT_VERSION")
    assert re.fullmatch(ort_version.replace(".", r"\.").replace("*", r"\d+"), ort_build.__version__), \
        f"the image pins onnxruntime {ort_version}, the tested one is {ort_build.__version__}"
    base = arg_default("CUDA_BASE")
    image, tag = base.split(":")
    assert image == "nvidia/cuda" and "cudnn" in tag and "runtime" in tag, base
    # The base's CUDA major.minor is the one the onnxruntime-gpu wheel was built for (13.0 for 1.31).
    assert tag.startswith(ort_build.cuda_version + "."), (tag, ort_build.cuda_version)


def test_multi_stage_with_gpu_and_cpu_variants():
    stages = {name: image for image, name in re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, re.M)}
    assert set(stages) == {"build", "base-gpu", "base-cpu", "runtime"}
    assert stages["base-gpu"] == "${CUDA_BASE}" and stages["runtime"] == "base-${VARIANT}"
    assert stages["base-cpu"].startswith("python:3")
    assert arg_default("VARIANT") == "gpu"
    assert "COPY --from=build /wheels /wheels" in DOCKERFILE
    # The variant picks the ONNX Runtime build: the CPU image never gets the CUDA one.
    assert '[ "$VARIANT" = cpu ] && echo onnxruntime || echo onnxruntime-gpu' in DOCKERFILE


def test_copied_sources_exist():
    copies = instructions("COPY")
    assert copies
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        if args.startswith("--from"):
            continue
        for source in parts[:-1]:
            default = re.fullmatch(r"\$\{\w+:-(.+)\}", source)  # ${BUNDLE:-README.md}: the default must exist
            source = default.group(1) if default else source
            assert "$" not in source, source
            assert (ROOT / source).exists(), source


def test_serving_install_only():
    runs = " ".join(instructions("RUN"))
    assert "torch" not in runs and "transformers" not in runs
    assert "[train" not in DOCKERFILE and ".[" not in runs
    # The runtime installs exactly pyproject's base and `serve` dependencies (with the variant's ONNX
    # Runtime) and the rmserve wheel without its dependencies: none of them is torch or transformers.
    assert "deps = p['dependencies'] + p['optional-dependencies']['serve']" in runs
    assert "pip install --no-cache-dir --no-index --no-deps /wheels/rmserve-*.whl" in runs
    project = PYPROJECT["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["serve"]:
        assert not re.match(r"(torch|transformers|rmserve)\b", dep), dep


def test_the_wheel_carries_every_package_and_the_image_copies_its_folders():
    """Every folder with an __init__.py under a mapped folder is a listed package (setuptools finds none
    by itself), and the image copies every mapped folder."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages, folders = set(setuptools["packages"]), setuptools["package-dir"]
    copied = {args.split()[0] for args in instructions("COPY") if not args.startswith("--")}
    for package, folder in folders.items():
        assert any(folder == c or folder.startswith(c + "/") for c in copied), \
            f"the image does not copy {folder}/ ({package})"
    by_folder = sorted(folders.items(), key=lambda kv: -len(kv[1]))  # the deepest mapping wins
    for init in ROOT.glob("*/**/__init__.py"):
        relative = init.parent.relative_to(ROOT).as_posix()
        mapped = next(((pkg, f) for pkg, f in by_folder if relative == f or relative.startswith(f + "/")), None)
        if mapped is None:
            continue  # tests/, bench/: not installed
        package = mapped[0] + relative[len(mapped[1]):].replace("/", ".")
        assert package in packages, f"{package} ({relative}/) would be missing from the wheel"


def test_runs_rmserve_serve_as_non_root_on_the_service_ports():
    assert instructions("ENTRYPOINT") == ['["rmserve", "serve"]']
    assert PYPROJECT["project"]["scripts"]["rmserve"] == "rmserve.cli:main"
    assert build_parser().parse_args(["serve"]).command == "serve"
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    defaults = Settings.model_fields
    ports = {int(p) for p in " ".join(instructions("EXPOSE")).split()}
    assert ports == {defaults["port"].default, defaults["grpc_port"].default}
    env = " ".join(instructions("ENV"))
    assert f"RMSERVE_PORT={defaults['port'].default}" in env and f"RMSERVE_GRPC_PORT={defaults['grpc_port'].default}" in env
    assert "RMSERVE_HOST=0.0.0.0" in env and "RMSERVE_BUNDLE=/bundle" in env
    healthcheck = instructions("HEALTHCHECK")
    assert healthcheck and f"http://127.0.0.1:{defaults['port'].default}/healthz" in healthcheck[0]


def test_bundle_is_baked_by_build_arg_or_mounted():
    assert re.search(r"^ARG BUNDLE=$", DOCKERFILE, re.M)
    assert "COPY --chown=rmserve ${BUNDLE:-README.md} /tmp/bundle-src" in DOCKERFILE
    assert "/bundle" in DOCKERFILE
