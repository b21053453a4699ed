"""Tests for clipsort.cli: ``clipsort sort`` and ``clipsort init`` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsort import __version__
from clipsort.cli import app
from tests.helpers import RGB, clipsort_process, python_process, tree
from tests.synthetic import draw, make_dataset, save, tiny_vit


@pytest.fixture
def cli(tiny_model: Path) -> CliRunner:
    return CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})


def sort(cli: CliRunner, *args: str) -> tuple[int, str, str]:
    result = cli.invoke(app, ["sort", *args])
    return result.exit_code, result.stdout, result.stderr


def test_sort_moves_each_file_into_its_class(cli: CliRunner, data_root: Path) -> None:
    """Before: three pictures in Images/; after: each in Dataset/<its colour>/, Images/ empty."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["red", "blue", "red"])
    assert tree(data_root / "ds")["Images"] == ["img0000.png", "img0001.jpg", "img0002.png"]
    code, out, _ = sort(cli, "--root", str(data_root), "--mode", "text")
    assert code == 0, out
    assert tree(data_root / "ds") == {
        "Clases/blue": ["ref0.png", "ref1.png"],
        "Clases/red": ["ref0.png", "ref1.png"],
        "Dataset/blue": ["img0001.jpg"],
        "Dataset/red": ["img0000.png", "img0002.png"],
    }
    assert "total" in out


def test_sort_files_phone_and_camera_raw_photos_by_what_they_show(cli: CliRunner, data_root: Path) -> None:
    """HEIC and RAW (DNG) are in the default formats: red and blue files of each land in their classes."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2)
    for name in ("red.heic", "blue.heic", "red.dng", "blue.dng"):
        fixture = Path(__file__).parents[1] / "fixtures" / name
        shutil.copy(fixture, data_root / "ds" / "Images" / f"IMG_{name}")
    code, out, _ = sort(cli, "--root", str(data_root))
    assert code == 0, out
    assert tree(data_root / "ds" / "Dataset") == {
        "blue": ["IMG_blue.dng", "IMG_blue.heic"],
        "red": ["IMG_red.dng", "IMG_red.heic"],
    }


def test_dry_run_moves_nothing_and_reports_destinations(cli: CliRunner, data_root: Path) -> None:
    """--dry-run --json tells where each file would go; the tree is unchanged."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["blue", "red"])
    before = tree(data_root)
    code, out, _ = sort(cli, "--root", str(data_root), "--dry-run", "--json")
    assert code == 0
    assert tree(data_root) == before
    records = [json.loads(line) for line in out.splitlines()]
    assert {(Path(r["file"]).name, r["class"], r["dry_run"]) for r in records} == {
        ("img0000.png", "blue", True),
        ("img0001.jpg", "red", True),
    }
    assert all(r["destination"].endswith(f"Dataset/{r['class']}/{Path(r['file']).name}") for r in records)


def test_json_stdout_holds_only_decisions(cli: CliRunner, data_root: Path) -> None:
    """Each stdout line is one JSON decision with file, class, score, runner-up and destination."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["red"] * 3)
    code, out, err = sort(cli, "--root", str(data_root), "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    for record in records:
        assert {"file", "class", "score", "runner_up", "destination", "mode", "model"} <= record.keys()
        assert record["class"] == "red" and record["runner_up"] == "blue"
    assert "sorted" in err  # the summary table moved to stderr


def test_collision_keeps_both_files(cli: CliRunner, data_root: Path) -> None:
    """A same-named file already in the class folder is kept; the new one gets a suffix."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["red"])
    (data_root / "ds" / "Dataset" / "red").mkdir(parents=True)
    (data_root / "ds" / "Dataset" / "red" / "img0000.png").write_bytes(b"earlier")
    code, _, _ = sort(cli, "--root", str(data_root), "--mode", "text")
    assert code == 0
    assert tree(data_root / "ds" / "Dataset") == {"red": ["img0000.png", "img0000_1.png"]}
    assert (data_root / "ds" / "Dataset" / "red" / "img0000.png").read_bytes() == b"earlier"


def test_non_image_goes_to_rejected(cli: CliRunner, data_root: Path) -> None:
    """A text file in the inbox is quarantined in Rejected/ with the reason logged."""
    make_dataset(data_root / "ds", {"red": "red"}, references=2)
    (data_root / "ds" / "Images" / "notes.jpg").write_text("not a picture")
    code, out, err = sort(cli, "--root", str(data_root), "--json")
    assert code == 0
    assert tree(data_root / "ds")["Rejected"] == ["notes.jpg"]
    assert json.loads(out)["reason"].startswith("not an image")
    assert "rejected" in err


def test_flag_beats_env_beats_file(cli: CliRunner, data_root: Path, tiny_model: Path) -> None:
    """mode from config.toml < CLIPSORT_MODE < --mode, as seen in the decisions."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["red"])
    Path("config.toml").write_text(f'mode = "text"\nroot = "{data_root}"\n')

    def mode(*args: str, env: dict[str, str] | None = None) -> str:
        result = cli.invoke(app, ["sort", "--dry-run", "--json", *args], env=env)
        return str(json.loads(result.stdout)["mode"])

    assert mode() == "text"
    assert mode(env={"CLIPSORT_MODE": "reference"}) == "reference-max"
    assert mode("--mode", "text", "--aggregate", "avg", env={"CLIPSORT_MODE": "reference"}) == "text"


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("ok", ["--dataset", "hats"], "unknown dataset 'hats'.*existing: ds"),
        ("no-classes", ["--dataset", "ds"], "has no classes"),
        ("ok", ["--model", "/no/such/model"], "model path '/no/such/model' does not exist"),
        ("ok", ["--mode", "fuzzy"], "mode = 'fuzzy'"),
        ("bad-config", [], "colour: unknown option"),
        ("ok", ["--mode", "reference", "--dataset", "textonly"], "no reference images"),
    ],
)
def test_user_errors_exit_2_and_move_nothing(
    cli: CliRunner, data_root: Path, setup: str, args: list[str], message: str
) -> None:
    """Each user error is one clear line on stderr, exit code 2, and an untouched tree."""
    make_dataset(
        data_root / "ds", {"red": "red"}, references=1 if setup != "no-classes" else 0, inbox=["red"]
    )
    if setup == "no-classes":
        (data_root / "ds" / "Clases" / "red").rmdir()
    (data_root / "textonly" / "Clases" / "red").mkdir(parents=True)
    if setup == "bad-config":
        Path("config.toml").write_text('colour = "red"\n')
    before = tree(data_root)
    code, _, err = sort(cli, "--root", str(data_root), *args)
    assert code == 2
    last = err.strip().splitlines()[-1] if "\n" not in message else err
    assert "clipsort: error:" in err
    assert re.search(message, err), err
    assert last
    state = {folder: names for folder, names in tree(data_root).items() if not folder.startswith(".clipsort")}
    assert state == before, "nothing moved (the journal in the state folder may have been opened)"


def test_init_creates_layout_and_config_once(data_root: Path) -> None:
    """init makes the three folders and a commented config.toml, and never overwrites it."""
    runner = CliRunner()
    result = runner.invoke(app, ["init", "shoes", "--root", str(data_root)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (data_root / "shoes").iterdir()) == ["Clases", "Dataset", "Images"]
    assert Path("config.toml").read_text().startswith("# clipsort configuration")
    Path("config.toml").write_text("# mine\n")
    assert runner.invoke(app, ["init", "hats", "--root", str(data_root)]).exit_code == 0
    assert Path("config.toml").read_text() == "# mine\n"
    made = runner.invoke(app, ["init", "--config", "etc/clipsort.toml"])
    assert made.exit_code == 2, "the folder of the new config file must exist"
    Path("etc").mkdir()
    assert runner.invoke(app, ["init", "--config", "etc/clipsort.toml"]).exit_code == 0
    assert Path("etc/clipsort.toml").read_text().startswith("# clipsort configuration")
    bad = runner.invoke(app, ["init", "../escape", "--root", str(data_root)])
    assert bad.exit_code == 2 and "invalid dataset name" in bad.stderr
    make_dataset(data_root / "full", RGB, references=2, inbox=["red"])
    before = tree(data_root / "full")
    again = runner.invoke(app, ["init", "full", "--root", str(data_root)])
    assert again.exit_code == 0
    assert f"created {data_root / 'full'}/{{Dataset}}" in again.stdout
    assert "left alone, as they exist: " in again.stdout and "{Clases,Images}" in again.stdout
    assert "holds 3 class folders" in again.stdout
    assert tree(data_root / "full") == before, "nothing in it touched"


def test_python_dash_m_runs_the_cli_in_a_real_process(data_root: Path, tiny_model: Path) -> None:
    """``python -m clipsort sort --json`` works as a subprocess, logs on stderr as JSON lines."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["blue"])
    done = clipsort_process("sort", "--root", str(data_root), "--model", str(tiny_model), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["class"] == "blue"
    events = [json.loads(line)["event"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert "model_loaded" in events and "sorted" in events
    assert tree(data_root / "ds" / "Dataset") == {"blue": ["img0000.png"]}


def test_sort_starts_decoding_and_placing_processes_only_when_an_inbox_holds_files(
    data_root: Path, tiny_model: Path
) -> None:
    """An empty inbox: ``clipsort sort`` starts no decoding process and no placing process; one
    batch: each of the decoding workers starts, and the placer thread places it; two batches: the
    placing process starts too, before the model loads (its start overlaps the model's load, not
    the first batch's decoding); a dry run starts none."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CLIPSORT_DECODE_IN": "processes",
        "CLIPSORT_DECODE_WORKERS": "2",
        "CLIPSORT_PLACE_IN": "process",
        "CLIPSORT_BATCH_SIZE": "1",
    }

    def started(*flags: str) -> tuple[int, int]:
        """Decoding processes and placing processes the run started."""
        command = ("sort", "--root", str(data_root), "--model", str(tiny_model), *flags)
        done = clipsort_process(*command, env=env)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        events = [line["event"] for line in lines]
        if "placer_started" in events:
            assert events.index("placer_started") < events.index("model_loading"), events
        return events.count("decoder_started"), events.count("placer_started")

    assert started() == (0, 0)
    save(draw(np.random.default_rng(4), "blue", "circle"), data_root / "ds" / "Images" / "sky.png")
    assert started() == (2, 0)
    for name, colour in (("sea.png", "blue"), ("rose.png", "red")):
        save(draw(np.random.default_rng(5), colour, "circle"), data_root / "ds" / "Images" / name)
    assert started("--dry-run") == (2, 0)
    assert started() == (2, 1)
    assert tree(data_root / "ds" / "Dataset") == {"blue": ["sea.png", "sky.png"], "red": ["rose.png"]}


def test_a_model_that_is_not_a_clip_is_one_line_and_exit_2(
    cli: CliRunner, data_root: Path, tmp_path: Path
) -> None:
    """A ViT image classifier given as --model: exit 2 and one line saying why, no traceback."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["red"])
    before = tree(data_root)
    code, _, err = sort(cli, "--root", str(data_root), "--model", str(tiny_vit(tmp_path / "vit")))
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("clipsort: error: model ")
    assert "is not a CLIP model: it cannot encode text" in err and "Traceback" not in err
    assert tree(data_root) == before


def test_a_torchvision_that_does_not_load_is_one_line_and_exit_2(
    data_root: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """``jpeg_decoder = "torchvision"`` with a torchvision built for another torch (it fails as it
    registers its operators, as PyPI's does beside the CPU build): one line, nothing moved."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    make_dataset(data_root / "ds", RGB, references=1, inbox=["red"])
    before = tree(data_root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPSORT_JPEG_DECODER": "torchvision"}
    found = python_process(
        "-c",
        f"import sys; sys.path.insert(0, {str(fake.parent)!r}); from clipsort.cli import main; main()",
        *("sort", "--root", str(data_root), "--model", str(tiny_model)),
        env=env,
    )
    assert found.returncode == 2, found.stderr
    assert re.fullmatch(
        r"clipsort: error: jpeg_decoder = 'torchvision': torchvision does not load beside torch \S+ "
        r"\(RuntimeError: operator torchvision::nms does not exist\); install the build made for it, "
        r"or set jpeg_decoder = 'pillow'",
        found.stderr.strip(),
    ), found.stderr
    assert tree(data_root) == before


def test_a_table_naming_no_dataset_is_warned_of_with_the_nearest_name(
    cli: CliRunner, data_root: Path
) -> None:
    """[datasets.exmaple] beside Data/example: a warning names the table and 'example'."""
    make_dataset(data_root / "example", {"red": "red", "blue": "blue"}, references=2, inbox=["red"])
    Path("config.toml").write_text('[datasets.exmaple]\nmode = "text"\n')
    code, _, err = sort(cli, "--root", str(data_root), "--dry-run")
    assert code == 0
    (warning,) = [
        record
        for record in (json.loads(line) for line in err.splitlines() if line.startswith("{"))
        if record["event"] == "dataset_table_unknown"
    ]
    assert warning["table"] == "[datasets.exmaple]" and warning["nearest"] == "example"
    assert warning["level"] == "warning"


def test_dry_run_decides_as_the_real_run_with_corrections(cli: CliRunner, data_root: Path) -> None:
    """After a correction, --dry-run predicts the class and score the real run then gives."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["red"], seed=2)
    picture = (data_root / "ds" / "Images" / "img0000.png").read_bytes()
    assert sort(cli, "--root", str(data_root))[0] == 0
    corrected = data_root / "ds" / "Dataset" / "red" / "img0000.png"
    assert cli.invoke(app, ["undo", "--root", str(data_root), str(corrected), "--to", "blue"]).exit_code == 0
    (data_root / "ds" / "Images" / "again.png").write_bytes(picture)  # the same picture once more
    before = tree(data_root)
    code, dry, _ = sort(cli, "--root", str(data_root), "--dry-run", "--json")
    assert code == 0 and tree(data_root) == before
    code, real, _ = sort(cli, "--root", str(data_root), "--json")
    assert code == 0
    predicted, done = json.loads(dry), json.loads(real)
    assert predicted["class"] == done["class"] == "blue", "the corrected example is the nearest one"
    assert predicted["score"] == pytest.approx(done["score"], abs=1e-6)


def test_version_and_help_say_what_the_program_does() -> None:
    """--version prints it; help shows no type beside a flag and names every mode."""
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip() == f"clipsort {__version__}"
    helped = runner.invoke(app, ["sort", "--help"], terminal_width=200)
    assert helped.exit_code == 0
    assert "<bool>" not in helped.stdout and re.search(r"--dry-run\s+Decide and report", helped.stdout)
    assert "reference, text, mixed or finetuned" in helped.stdout


def test_eval_says_when_it_uses_fewer_folds_than_asked(cli: CliRunner, data_root: Path) -> None:
    """Three references per class cannot make five folds: eval runs three and says so."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=3)
    result = cli.invoke(app, ["eval", "--root", str(data_root), "--folds", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["folds"] == 3
    assert "3 folds instead of 5" in result.stderr


def test_a_daemon_that_cannot_load_its_model_leaves_no_state(data_root: Path) -> None:
    """`clipsort run` with a missing model: exit 2, one line, and no state folder created."""
    make_dataset(data_root / "ds", {"red": "red"}, references=1)
    result = CliRunner().invoke(app, ["run", "--root", str(data_root), "--model", str(data_root / "none")])
    assert result.exit_code == 2 and "clipsort: error: model path" in result.stderr
    assert not (data_root / ".clipsort").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("state-in-proc", "state_dir '/proc/clipsort-state' cannot be used"),
        ("datasets-not-json", 'error parsing value for field "datasets"'),
        ("metrics-port-taken", "cannot serve metrics on 127.0.0.1:"),
    ],
)
def test_a_daemon_that_cannot_start_says_why_in_one_line(
    data_root: Path, tiny_model: Path, setup: str, message: str
) -> None:
    """An unusable state folder, unparsable environment or taken port: exit 2, one line, no traceback."""
    make_dataset(data_root / "ds", {"red": "red"}, references=1)
    env = {**os.environ, "CLIPSORT_MODEL": str(tiny_model), "HF_HUB_OFFLINE": "1"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if setup == "state-in-proc":
            env["CLIPSORT_STATE_DIR"] = "/proc/clipsort-state"
        elif setup == "datasets-not-json":
            env["CLIPSORT_DATASETS"] = "notjson"
        else:
            env["CLIPSORT_METRICS_PORT"] = str(taken.getsockname()[1])
        done = clipsort_process(
            "run", "--root", str(data_root), env={**os.environ, **env, "HF_HUB_OFFLINE": "1"}
        )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("clipsort: error:") and message in last
    assert "Traceback" not in done.stderr


def test_an_inbox_that_is_a_symlink_is_not_followed(cli: CliRunner, data_root: Path, tmp_path: Path) -> None:
    """Images/ linked to a folder outside the root: nothing in it is sorted or moved; a warning says so."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=2)
    outside = tmp_path / "elsewhere"
    make_dataset(outside, {}, inbox=["red", "blue"])
    shutil.rmtree(data_root / "ds" / "Images")
    (data_root / "ds" / "Images").symlink_to(outside / "Images")
    before = tree(outside)
    result = cli.invoke(app, ["sort", "--root", str(data_root)])
    assert result.exit_code == 0, result.output
    assert tree(outside) == before
    assert "symlinked_folder_skipped" in result.stderr
    assert "Dataset" not in tree(data_root / "ds")


def huge_png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (its pixels never come): a 108 MP picture's start."""
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # and its checksum
    path.write_bytes(bytes(data))


def test_terminal_lines_say_would_and_why_and_json_names_a_held_files_guess(
    data_root: Path, tiny_model: Path
) -> None:
    """Dry runs say `would sort`; a held file says why; --json: class null and a guess; no Pillow warning."""
    make_dataset(data_root / "ds", RGB, references=3, inbox=["red"], seed=4)
    Image.effect_noise((96, 96), 90).convert("RGB").save(data_root / "ds" / "Images" / "noise.png")
    huge_png_header(data_root / "ds" / "Images" / "huge.png", 12_000, 9_000)
    env = {**os.environ, "CLIPSORT_MODEL": str(tiny_model), "CLIPSORT_LOG_FORMAT": "console"}
    dry = clipsort_process("sort", "--root", str(data_root), "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would sort" in dry.stderr and "would reject" in dry.stderr
    assert not re.search(r"\bsorted\b.*img0000", dry.stderr), "a dry run never says it sorted"
    held = [json.loads(line) for line in dry.stdout.splitlines() if json.loads(line)["status"] == "review"]
    assert held and all(record["class"] is None and record["guess"] in RGB for record in held)
    review_line = next(line for line in dry.stderr.splitlines() if "would review" in line)
    assert "reason=unknown" in review_line and "detail=" in review_line and "<" in review_line
    assert "DecompressionBombWarning" not in dry.stderr and "warnings.warn" not in dry.stderr
    assert re.search(r"would reject.*huge\.png.*pixel limit", dry.stderr), dry.stderr
