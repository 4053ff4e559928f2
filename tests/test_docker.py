"""The GPU image's files, checked without a Docker engine (none runs here): the Dockerfile passes
hadolint, every file it copies exists and survives .dockerignore, every shell script passes
shellcheck, the image's Paddle and Python get the project's pins, the Docker commands of the docs use
only what these files provide, and the GPU options stop cleanly on this CPU-only Paddle."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

BIN = Path(sys.executable).parent
IMAGE_PYTHON = "3.10"  # the Python of paddlepaddle/paddle:3.0.0-gpu-* (its wheels are cp310)


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def base_image() -> str:
    args = dict(rest.split("=", 1) for word, rest in dockerfile() if word == "ARG" and "=" in rest)
    (image,) = [rest for word, rest in dockerfile() if word == "FROM"]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def workdir() -> str:
    return [rest for word, rest in dockerfile() if word == "WORKDIR"][-1]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore drops `path` or a folder above it (Docker matches with Go's filepath rules;
    fnmatch agrees for the plain patterns used here)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.removeprefix("**/")) or fnmatch.fnmatch(p, pat)
               for pat in dockerignore_patterns() for p in prefixes)


def shell_scripts() -> list[Path]:
    scripts = [p for p in REPO.rglob("*.sh") if not any(part.startswith(".venv") for part in p.relative_to(REPO).parts)]
    return sorted(scripts) + [REPO / ".ci" / "run"]


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([BIN / "hadolint", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_file_the_dockerfile_copies_exists_and_is_sent_to_the_build():
    copies = [shlex.split(rest) for word, rest in dockerfile() if word in ("COPY", "ADD")]
    assert copies, "the Dockerfile copies nothing"
    sources = [src for args in copies for src in [a for a in args if not a.startswith("--")][:-1]]
    needed = {"requirements.txt", "pyproject.toml", "paddle_asr", "run.sh", "local", "utils", "conf", "recipes",
              "docker"}
    assert needed <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which is not in the repository"
        assert not ignored(src), f"the Dockerfile copies {src}, but .dockerignore keeps it out of the build context"
    # Everything the entry point and the recipes run at build or run time is in the image.
    for needed in ("docker/entrypoint.sh", "docker/visualdl.sh", "utils/setup_env.sh", "local/run_stages.sh"):
        assert any(needed == s or needed.startswith(s + "/") for s in sources), f"{needed} is not copied"
    # ...and nothing heavy or private is: environments, data, experiments.
    for private in (".venv/bin/python", "recipes/demo/exp/x", "recipes/aishell/data/x", ".git/config", "artifacts/x"):
        assert ignored(private), f".dockerignore lets {private} into the build context"
    (entry,) = [rest for word, rest in dockerfile() if word == "ENTRYPOINT"]
    assert "docker/entrypoint.sh" in entry


def test_every_shell_script_passes_shellcheck():
    scripts = shell_scripts()
    assert REPO / "docker" / "entrypoint.sh" in scripts and REPO / "docker" / "visualdl.sh" in scripts
    for script in scripts:
        proc = subprocess.run([BIN / "shellcheck", "-x", str(script.relative_to(REPO))], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}:\n{proc.stdout}{proc.stderr}"


def pins() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [Requirement(x) for x in lines if x.strip() and not x.startswith("#")]


def test_the_images_paddle_is_the_pinned_paddle():
    image = base_image()
    match = re.fullmatch(r"paddlepaddle/paddle:(\d+\.\d+\.\d+)-gpu-cuda([\d.]+)-cudnn([\d.]+)-trt([\d.]+)", image)
    assert match, image
    paddle_pin = [r for r in pins() if r.name == "paddlepaddle"]
    assert [str(r.specifier) for r in paddle_pin] == [f"=={match.group(1)}"], "image and requirements.txt disagree"
    import paddle

    assert paddle.__version__ == match.group(1)  # the CPU wheel the tests run on is the same release
    readme = (REPO / "docs/gpu_docker.md").read_text()  # the docs page with the Docker commands
    assert image in readme and f"CUDA {match.group(2)}" in readme and f"cuDNN {match.group(3)}" in readme
    # The build checks the image's Paddle against the pin and installs every other line of
    # requirements.txt unchanged: run its filter on the real file.
    (install,) = [rest for word, rest in dockerfile() if word == "RUN" and "requirements-gpu.txt" in rest]
    assert "grep -v '^paddlepaddle==' requirements.txt > /tmp/requirements-gpu.txt" in install
    assert "pip install --no-cache-dir -r /tmp/requirements-gpu.txt" in install
    assert 'paddle.__version__ == sys.argv[1]' in install
    kept = subprocess.run(["grep", "-v", "^paddlepaddle==", "requirements.txt"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    kept_pins = [Requirement(x) for x in kept.splitlines() if x.strip() and not x.startswith("#")]
    assert {r.name for r in kept_pins} == {r.name for r in pins()} - {"paddlepaddle"}


def test_requirements_resolve_for_the_images_python(tmp_path):
    """pip resolves the pins for CPython 3.10 on manylinux exactly as listed: every package has a
    3.10 wheel at its pinned version, nothing unpinned is pulled in, and nothing asks for the CPU
    paddlepaddle wheel (which would replace the image's GPU build). jieba ships only a source
    archive (pure Python), so it is resolved by name alone."""
    env = {"python_version": IMAGE_PYTHON, "python_full_version": f"{IMAGE_PYTHON}.0"}
    chosen = [r for r in pins() if r.marker is None or r.marker.evaluate(env)]
    by_name = {canonicalize_name(r.name): r for r in chosen}
    assert len(by_name) == len(chosen), "two lines pin the same package for the image's Python"
    wheels = [r for r in chosen if r.name not in ("paddlepaddle", "jieba")]
    req = tmp_path / "image-requirements.txt"
    req.write_text("".join(f"{r.name}{r.specifier}\n" for r in wheels))
    platforms = [a for p in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64",
                             "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64") for a in ("--platform", p)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--disable-pip-version-check",
         "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--implementation", "cp",
         "--abi", "cp" + IMAGE_PYTHON.replace(".", ""), *platforms, "--target", str(tmp_path / "t"), "-r", str(req)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("Would install ")]
    would = {}
    for item in line.removeprefix("Would install ").split():
        name, _, version = item.rpartition("-")
        would[canonicalize_name(name)] = version
    assert would == {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in wheels}


def test_the_no_deps_requirements_install_without_dependencies_for_the_images_python(tmp_path):
    """requirements-no-deps.txt (PaddleSpeech's client) is installed with --no-deps by the image and by
    utils/setup_env.sh, and resolves to exactly its pins for the image's Python."""
    (install,) = [rest for word, rest in dockerfile() if word == "RUN" and "requirements-gpu.txt" in rest]
    assert "pip install --no-cache-dir --no-deps -r requirements-no-deps.txt" in install
    assert "--no-deps -r \"$root/requirements-no-deps.txt\"" in (REPO / "utils/setup_env.sh").read_text()
    lines = (REPO / "requirements-no-deps.txt").read_text().splitlines()
    wanted = {canonicalize_name(r.name): str(r.specifier).removeprefix("==")
              for r in (Requirement(x) for x in lines if x.strip() and not x.startswith("#"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--target", str(tmp_path / "t"),
         "-r", str(REPO / "requirements-no-deps.txt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("Would install ")]
    would = {canonicalize_name(item.rpartition("-")[0]): item.rpartition("-")[2]
             for item in line.removeprefix("Would install ").split()}
    assert would == wanted


def readme_docker_commands() -> list[list[str]]:
    readme = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                if part.strip().startswith("docker "):
                    commands.append(shlex.split(part))
    return commands


def script_options(script: str) -> set[str]:
    """The --options a script takes, from its own --help (utils/parse_options.sh)."""
    proc = subprocess.run(["bash", script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"^\s+(--\w+)", proc.stdout, flags=re.M))


def test_readme_docker_commands_are_the_ones_the_files_support():
    commands = readme_docker_commands()
    builds = [c for c in commands if c[1] == "build"]
    runs = [c for c in commands if c[1] == "run"]
    assert builds == [["docker", "build", "-t", "paddle-asr", "."]] and len(runs) >= 3
    copied = [a for word, rest in dockerfile() if word == "COPY" for a in shlex.split(rest)[:-1]]
    seen_scripts, served = set(), []
    for run in runs:
        i, image = 2, None
        while image is None:
            word = run[i]
            if word in ("-v", "-p", "--shm-size", "--gpus", "--network", "-e", "--build-arg"):
                value = run[i + 1]
                if word == "-v":
                    target = value.split(":")[1]
                    assert target.startswith("/data/") or target.startswith(workdir() + "/"), value
                if word == "-p":
                    assert value.startswith("127.0.0.1:"), f"{value}: publish the dashboard on the loopback only"
                i += 2
            elif word.startswith("-"):
                assert word in ("--rm", "-it"), word
                i += 1
            else:
                image = word
        assert image == "paddle-asr", run
        command = run[i + 1:]
        if command[:1] == ["bash"]:
            script = command[1]
            assert (REPO / script).is_file() and any(script == c or script.startswith(c + "/") for c in copied), script
            options = script_options(script)
            used = {"--" + w[2:].split("=")[0].replace("-", "_") for w in command[2:] if w.startswith("--")}
            assert used <= options, f"{script} has no option {used - options}"
            seen_scripts.add(script)
        elif command[:2] == ["paddle-asr", "serve"]:
            options = set(re.findall(r"(--\w+)", paddle_asr("serve", "--help", cwd=REPO).stdout))
            used = {w.split("=")[0] for w in command[2:] if w.startswith("--")}
            assert used <= options, f"paddle-asr serve has no option {used - options}"
            # Inside the container the server must listen on all interfaces; -p keeps it on the host's loopback.
            assert command[command.index("--host") + 1] == "0.0.0.0", command
            served.append([run[j + 1] for j, w in enumerate(run[:i]) if w == "-p"])
        else:
            assert command == ["true"], command  # the entry point alone (its device report)
    assert {"recipes/aishell/run.sh", "docker/visualdl.sh"} <= seen_scripts
    exposed = {int(p) for word, rest in dockerfile() if word == "EXPOSE" for p in rest.split()}
    assert served and all(len(p) == 1 and int(p[0].split(":")[-1]) in exposed for p in served), (served, exposed)


def test_entrypoint_reports_the_devices_then_runs_the_command(tmp_path):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")  # paddle-asr is on PATH in the image
    proc = subprocess.run(["bash", str(REPO / "docker" / "entrypoint.sh"), "bash", "-c", "echo ran in $PWD"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [x.split()[0] for x in lines[:5]] == ["cuda", "cudnn", "nccl", "amp", "tensorrt"]
    assert all("unavailable" in x and "CPU build" in x for x in lines[:5])  # this Paddle is the CPU wheel
    assert lines[5] == f"ran in {REPO}"  # the project folder, as WORKDIR is in the image


def paddle_asr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paddle_asr.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["train", "--config", "conf.yaml", "--exp_dir", "exp/x", "--gpus", "0,1"],
     "--gpus 0,1 (training on GPUs; --nproc N trains with CPU processes) needs cuda, which is unavailable here: "
     "this Paddle 3.0.0 is a CPU build (no CUDA)"),
    (["test-export", "--bundle", "m", "--data", "d", "--decode_config", "c", "--out_prefix", "o", "--trt", "fp16"],
     "--trt fp16 runs on a GPU: add --device gpu (or gpu:N)"),
    (["test-export", "--bundle", "m", "--data", "d", "--decode_config", "c", "--out_prefix", "o", "--device", "tpu"],
     "--device tpu: use cpu, gpu or gpu:N"),
    (["devices", "--require", "tensorrt"], "unavailable here: tensorrt (this Paddle 3.0.0 is a CPU build (no CUDA))"),
])
def test_gpu_options_on_a_cpu_build_say_what_is_missing(tmp_path, args, expected):
    proc = paddle_asr(*args, cwd=tmp_path)
    assert proc.returncode in (1, 3) and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "exp").exists()  # refused before anything was written
