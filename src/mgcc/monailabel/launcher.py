"""`mgcc label`: serve and train the MGCC segmentation bundle with MONAI Label, for 3D Slicer users.

MONAI Label runs in its own virtual environment (`$MGCC_LABEL_VENV`, default `.venv-label` in the checkout,
made by `apps/monailabel/setup_env.sh` from a pinned lock): it needs pydicom 2, the MONAI Deploy App SDK
pydicom 3. This launcher runs in the main environment and never imports MONAI Label. It

- builds the app folder MONAI Label is started with: `app/main.py` (MONAI Label's `monaibundle` sample app
  with an input check in front of /infer and the `mgcc_disagreement` scoring and strategy) and a *copy* of
  the bundle under `<app>/model/<bundle name>/` (training through MONAI Label rewrites `models/model.pt`
  there, never in the source bundle), with optional config overrides written into the copy;
- starts `monailabel start_server` on 127.0.0.1, offline (`--conf zoo_source github`, `--conf sam2 false`:
  the defaults would fetch a model list and SAM2 weights from the web);
- makes a phantom studies folder for trying it out (`mgcc label studies`);
- talks to a server through `client.py` (MONAI Label's own `MONAILabelClient`, run in the label environment).

Command line (`mgcc label ...`, see `mgcc.cli`), e.g.:
    mgcc label setup
    mgcc label studies --out studies --n 24
    mgcc label serve --studies studies [--bundle bundles/ultrasound_mgcc_segmentation] [--port 8000]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mgcc import REPO_ROOT, SEG_BUNDLE, shipped_folder
from mgcc.errors import MgccError

#: the MONAI Label app and its environment's set-up: `apps/monailabel` in a checkout, `mgcc/_monailabel_app` in
#: the wheel
APP_DIR = shipped_folder("_monailabel_app", "apps/monailabel")
SETUP_SCRIPT = APP_DIR / "setup_env.sh"
APP_MAIN = APP_DIR / "app" / "main.py"
CLIENT = Path(__file__).resolve().parent / "client.py"  # run as a script in the MONAI Label environment
DEFAULT_BUNDLE = SEG_BUNDLE
CONFIGS = ("inference.json", "train.json")

#: Image files of the studies folder that form the unlabeled set of MGCC training through MONAI Label.
UNLABELED_PATTERNS = ("*.png", "*.jpg", "*.jpeg")


def label_overrides(studies: str | Path) -> dict[str, Any]:
    """Settings written into the served copy of the bundle (see apps/monailabel/BUNDLE_NOTES.md).

    MONAI Label passes only the datastore's *labeled* images to training (`train#dataset#data`); the MGCC
    unlabeled set becomes every image of the studies folder, listed when training starts.
    """
    studies = str(Path(studies).resolve())
    found = f"f for e in {UNLABELED_PATTERNS!r} for f in glob.glob(os.path.join({studies!r}, e))"
    listing = f"$[{{'image': f}} for f in sorted({found})]"
    return {"train#unlabeled_dataset#data": listing, "show_progress": False}


class LabelError(MgccError, RuntimeError):
    """A MONAI Label set-up or server problem, with a message saying what to do."""


# --------------------------------------------------------------------------------------------- environment
def label_venv() -> Path:
    """The MONAI Label environment: `$MGCC_LABEL_VENV`, else `.venv-label` in the checkout (or, for an installed
    wheel, in the current folder)."""
    default = REPO_ROOT if (REPO_ROOT / "apps" / "monailabel").is_dir() else Path.cwd()
    return Path(os.environ.get("MGCC_LABEL_VENV", default / ".venv-label")).resolve()


def monailabel_executable() -> Path:
    return label_venv() / "bin" / "monailabel"


def setup_environment(quiet: bool = False) -> Path:
    """Create the MONAI Label environment if needed (idempotent; `apps/monailabel/setup_env.sh`)."""
    if not SETUP_SCRIPT.is_file():
        raise LabelError(f"setup script not found: {SETUP_SCRIPT}")
    env = dict(os.environ, MGCC_LABEL_VENV=str(label_venv()))
    result = subprocess.run(["bash", str(SETUP_SCRIPT)], env=env, capture_output=quiet, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout or "")[-2000:] + (result.stderr or "")[-2000:] if quiet else ""
        raise LabelError(f"creating the MONAI Label environment failed (exit {result.returncode}).\n{tail}")
    if not monailabel_executable().is_file():
        raise LabelError(f"{monailabel_executable()} missing after setup")
    return label_venv()


# ------------------------------------------------------------------------------------------------ app folder
def apply_overrides(bundle_dir: Path, overrides: dict[str, Any]) -> dict[str, list[str]]:
    """Write `overrides` (bundle id -> value) into the bundle copy's inference.json and train.json.

    A key goes into every one of those configs that already defines its top-level id; a key that none of
    them defines is an error (a typo would otherwise be silently ignored). Returns key -> files changed.
    """
    from monai.bundle import ConfigParser

    parsers = {}
    for name in CONFIGS:
        path = bundle_dir / "configs" / name
        if path.is_file():
            parsers[name] = ConfigParser(ConfigParser.load_config_file(path))
    changed: dict[str, list[str]] = {}
    for key, value in overrides.items():
        root = key.split("#")[0]
        for name, parser in parsers.items():
            if root in parser:
                parser[key] = value
                changed.setdefault(key, []).append(name)
        if key not in changed:
            raise LabelError(f"override '{key}': no config of {bundle_dir} defines '{root}' ({', '.join(parsers)})")
    for name, parser in parsers.items():
        ConfigParser.export_config_file(parser.get(), bundle_dir / "configs" / name, indent=4)
    return changed


def prepare_app(
    workdir: str | Path,
    bundle: str | Path | None = None,
    studies: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    fresh_model: bool = False,
) -> tuple[Path, str]:
    """Build `<workdir>/app` for `monailabel start_server`; return (app dir, model name).

    The bundle is copied to `<app>/model/<bundle folder name>/`. Configs and code are refreshed on every
    call; `models/` is copied only when the app's copy has no `model.pt` yet (so weights retrained through
    MONAI Label survive a restart) or when `fresh_model` is set; the temporary `.<name>.part` files of a checkpoint
    save that a kill cut short are removed (the bundle saves atomically: `model.pt` is whole). With `studies`, the
    MONAI Label settings of `label_overrides(studies)` are written into the copy; `overrides` (bundle id -> value)
    come last.
    """
    bundle = Path(bundle or DEFAULT_BUNDLE).resolve()
    for required in ("configs/metadata.json", "configs/inference.json"):
        if not (bundle / required).is_file():
            raise LabelError(f"{bundle} is not a servable bundle: {required} is missing")
    name = bundle.name
    app = Path(workdir).resolve() / "app"
    target = app / "model" / name
    if target.resolve() == bundle:
        raise LabelError(f"the app folder would overwrite the bundle itself ({bundle}); choose another workdir")
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy2(APP_MAIN, app / "main.py")

    keep_models = (target / "models" / "model.pt").is_file() and not fresh_model
    skip = {"eval", "logs", "runs", "__pycache__"}
    if target.exists():
        for child in target.iterdir():
            if child.name == "models" and keep_models:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for child in bundle.iterdir():
        if child.name in skip or (child.name == "models" and keep_models):
            continue
        dest = target / child.name
        if child.is_dir():
            shutil.copytree(child, dest, ignore=shutil.ignore_patterns(*skip))
        else:
            shutil.copy2(child, dest)
    (target / "models").mkdir(exist_ok=True)
    for partial in (target / "models").glob(".*.part"):  # a checkpoint save cut short by a kill (never renamed)
        partial.unlink()
    settings = {**(label_overrides(studies) if studies else {}), **(overrides or {})}
    if settings:
        apply_overrides(target, settings)
    if not (target / "models" / "model.pt").is_file() and not (target / "models" / "model.ts").is_file():
        raise LabelError(
            f"{bundle}/models has no model.pt: MONAI Label's BundleInferTask ignores a bundle without weights. "
            "Train the bundle first (mgcc run, or python -m monai.bundle run with configs/train.json)."
        )
    return app, name


def server_command(
    app: Path, studies: Path, model: str, host: str = "127.0.0.1", port: int = 8000, conf: dict | None = None
) -> list[str]:
    """The `monailabel start_server` command line serving `model` offline from `app`."""
    settings = {"models": model, "zoo_source": "github", "sam2": "false", "preload": "false", **(conf or {})}
    cmd = [str(monailabel_executable()), "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--host", host, "--port", str(port)]
    for key, value in settings.items():
        cmd += ["--conf", key, str(value)]
    return cmd


def server_env() -> dict[str, str]:
    """Environment for the server: the label venv first on PATH, no experiment tracking (mlflow)."""
    env = dict(os.environ)
    env["PATH"] = f"{label_venv() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(label_venv())
    env.pop("PYTHONPATH", None)
    env.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    return env


# --------------------------------------------------------------------------------------------- studies
def make_studies(out: str | Path, n: int = 24, size: int = 128, seed: int = 0, labeled: int = 8) -> Path:
    """A MONAI Label datastore folder of phantom ultrasound images: `<out>/<id>.png` (8-bit grayscale) and,
    for the first `labeled` lesion images, `<out>/labels/final/<id>.png` (0 = background, 1 = lesion, as a
    Slicer labelmap). Also writes `<out>/phantom_masks/<id>.png` (0/255) for every image, for checking."""
    import tempfile

    import numpy as np
    from PIL import Image

    from mgcc.data.phantom import make_phantom_dataset

    out = Path(out)
    labels = out / "labels" / "final"
    masks = out / "phantom_masks"
    labels.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = make_phantom_dataset(Path(tmp), n=int(n), size=int(size), seed=int(seed))
        count = 0
        for image_path in sorted(raw.glob("*/*.png")):
            if "_mask" in image_path.stem:
                continue
            cls, index = image_path.parent.name, int(image_path.stem.split("(")[-1].rstrip(")"))
            image_id = f"{cls}_{index:03d}"
            mask = np.zeros(Image.open(image_path).size[::-1], dtype=bool)
            for mask_path in image_path.parent.glob(f"{image_path.stem}_mask*.png"):
                mask |= np.asarray(Image.open(mask_path)) > 0
            shutil.copy2(image_path, out / f"{image_id}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{image_id}.png")
            if cls != "normal" and count < int(labeled):
                Image.fromarray(mask.astype(np.uint8)).save(labels / f"{image_id}.png")
                count += 1
    return out


# ---------------------------------------------------------------------------------------------- client
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_client(url: str, command: str, *args: str, timeout: float = 900.0) -> dict:
    """Run one `client.py` command (MONAI Label's `MONAILabelClient`) in the label environment against the server
    at `url`; return its answer: `{"status": 200, "answer": ...}` or `{"status": code, "detail": ...}`."""
    cmd = [str(label_venv() / "bin" / "python"), str(CLIENT), "--url", url, command, *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=server_env())
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise LabelError(
            f"{CLIENT.name} {command} failed (exit {result.returncode}): {result.stderr[-2000:]}"
        ) from None


def wait_for_server(
    url: str, process: subprocess.Popen | None = None, timeout: float = 180.0, log: Path | None = None
) -> dict:
    """Poll /info/ until the server answers; fail early (with the log's tail) if the process exits."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-4000:] if log and log.is_file() else ""
            raise LabelError(f"MONAI Label server exited with code {process.returncode}.\n{tail}")
        last = label_client(url, "info", timeout=30)
        if last["status"] == 200:
            return last["answer"]
        time.sleep(1.0)
    tail = log.read_text()[-4000:] if log and log.is_file() else ""
    raise LabelError(f"MONAI Label server at {url} did not answer within {timeout:.0f} s ({last}).\n{tail}")


# ------------------------------------------------------------------------------------------------- CLI
class Label:
    """MONAI Label for the MGCC bundle: `setup`, `studies`, `app`, `serve`."""

    def setup(self) -> None:
        """Create (or check) the MONAI Label virtual environment (.venv-label); idempotent."""
        setup_environment()

    def studies(self, out: str, n: int = 24, size: int = 128, seed: int = 0, labeled: int = 8) -> None:
        """Write a phantom studies folder (datastore) with `labeled` images already labeled."""
        root = make_studies(out, n=n, size=size, seed=seed, labeled=labeled)
        print(
            f"studies: {len(list(root.glob('*.png')))} images, "
            f"{len(list((root / 'labels' / 'final').glob('*')))} labeled, in {root}"
        )

    def app(
        self,
        workdir: str = "outputs/monailabel",
        bundle: str | None = None,
        studies: str | None = None,
        overrides: dict | str | None = None,
        fresh_model: bool = False,
    ) -> None:
        """Build the MONAI Label app folder (sample `monaibundle` app + a copy of the bundle); print it."""
        app, name = prepare_app(workdir, bundle, studies, _parse_overrides(overrides), fresh_model)
        print(f"app: {app} (model '{name}': {app / 'model' / name})")

    def serve(
        self,
        studies: str,
        bundle: str | None = None,
        port: int = 8000,
        host: str = "127.0.0.1",
        workdir: str = "outputs/monailabel",
        overrides: dict | str | None = None,
        fresh_model: bool = False,
        setup: bool = True,
    ) -> int:
        """Start `monailabel start_server` with the `monaibundle` app and our bundle (blocks; Ctrl-C stops).

        --studies: the datastore folder (PNG images; labels go to <studies>/labels/final).
        --bundle: bundle folder (default: bundles/ultrasound_mgcc_segmentation); it is copied into
          <workdir>/app/model/<name>/, and retrained weights are written there.
        --overrides: JSON object of bundle config ids -> values written into the copy, e.g.
          '{"base_channels": 16, "spatial_size": [128, 128]}' (must match the checkpoint).
        """
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: serving on {host}; MONAI Label has no authentication enabled here", file=sys.stderr)
        if setup:
            setup_environment()
        studies_dir = Path(studies).resolve()
        if not studies_dir.is_dir():
            raise LabelError(f"studies folder not found: {studies_dir} (make one with `mgcc label studies --out DIR`)")
        app, name = prepare_app(workdir, bundle, studies_dir, _parse_overrides(overrides), fresh_model)
        cmd = server_command(app, studies_dir, name, host=host, port=int(port))
        print(f"MONAI Label: model '{name}' from {app / 'model' / name}\n  http://{host}:{port}/  (Ctrl-C stops)")
        print("  " + " ".join(cmd), flush=True)
        return run_forwarding_signals(cmd, env=server_env(), cwd=str(app))


def run_forwarding_signals(cmd: list[str], **popen: Any) -> int:
    """Run `cmd` in its own process group and pass SIGTERM, SIGINT and SIGHUP on to the whole group, then wait
    for it: stopping `mgcc label serve` (Ctrl-C, `kill`, a closed terminal) stops the server and its workers
    instead of leaving them serving."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {stop: signal.signal(stop, forward) for stop in stops}
    try:
        return proc.wait()
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


def _parse_overrides(overrides: dict | str | None) -> dict:
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, dict):
        return overrides
    value = json.loads(overrides)
    if not isinstance(value, dict):
        raise LabelError(f"--overrides must be a JSON object, got {overrides!r}")
    return value
