"""Hostile input, one test each: every case ends in a clear error that names the file or key, or in a counted
skip; never a silent wrong result, never a traceback.

Real files, the real tiny model, real headless Chromium and the real command line where the case reaches them.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from envs.benchmarks.common import DataError, read_json, read_records
from envs.qa import QAEnv, read_items

ROOT = Path(__file__).resolve().parents[1]
RUN = [f"{ROOT / 'experiments' / 'run.py'}", "env=synth_table", "model=tiny", "iterations=0", "env.n_train=6",
       "env.n_test=4", "env.max_new_tokens=8", "eval.ns=[1]", "warmup.teacher_examples=2", "train.batch_size=4"]


def run_cli(*args: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """`python experiments/run.py ARGS`, after `prelude` (Python run first in the same process: a simulated
    fault) when given."""
    code = f"{prelude}\nimport runpy, sys\nsys.argv = {list(args)!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exit status != 0 and an `error: ...` line, no Python traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), proc.stderr[-2000:]
    return line


@pytest.fixture()
def dataset(tmp_path) -> Path:
    from envs.synthetic import build_dataset

    return build_dataset("synth_table", tmp_path / "data", n_train=4, n_test=2, seed=0)


# ------------------------------------------------------------------ images

def test_missing_image_is_named_when_the_dataset_is_read(dataset):
    item = read_items(dataset / "train.jsonl")[1]
    (dataset / item.image).unlink()
    with pytest.raises(DataError, match=f"image .*{Path(item.image).name} of item {item.id} is missing"):
        read_items(dataset / "train.jsonl")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_is_named_when_the_model_would_see_it(dataset, tiny, damage):
    """A damaged image on disk stops generation with its path, not PIL's traceback from inside a batch."""
    from agent.prompts import Prompts
    from helpers import PROMPTS, make_policy

    assert isinstance(PROMPTS, Prompts)
    env = QAEnv("synth_table", read_items(dataset / "train.jsonl"), dataset, text_context=False, breakdown=())
    obs, _ = env.reset(options={"task_id": env.episodes()[0][0]})
    image = Path(obs.images[0])
    data = image.read_bytes()
    image.write_bytes({"garbage": b"not a png at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    policy = make_policy(*tiny)
    with pytest.raises(DataError, match=f"image {image}: cannot be read"):
        policy.generate([PROMPTS.cot_prompt(obs)], n=1, greedy=True)


# ------------------------------------------------------------------ dataset files

def test_truncated_dataset_file_names_the_file_and_line(dataset, tmp_path):
    path = dataset / "train.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the last line cut in the middle
    with pytest.raises(DataError, match=rf"{path}: invalid JSON on line {len(text.splitlines())}"):
        read_items(path)
    bench = tmp_path / "problems.json"
    bench.write_text('[{"id": 1, "question": "q"}, {"id": 2, "quest')
    with pytest.raises(DataError, match=rf"{bench}: invalid JSON at line 1 column 40"):
        read_json(bench)
    with pytest.raises(DataError, match=rf"{bench}: invalid JSON"):
        read_records(bench)


def test_non_utf8_dataset_file_is_refused_not_replaced(dataset, tmp_path):
    """Latin-1 bytes in a dataset are an error naming the file: replacing them would change questions silently."""
    path = dataset / "train.jsonl"
    path.write_bytes(path.read_bytes().replace(b"table", "t\u00e4ble".encode("latin-1"), 1))
    with pytest.raises(DataError, match=rf"{path}: not UTF-8"):
        read_items(path)
    for reader in (read_json, read_records):
        bench = tmp_path / f"{reader.__name__}.json"
        bench.write_bytes('[{"question": "caf\u00e9"}]'.encode("latin-1"))
        with pytest.raises(DataError, match=rf"{bench}: not UTF-8"):
            reader(bench)


def test_a_row_that_is_not_an_item_is_named(dataset):
    path = dataset / "train.jsonl"
    path.write_text(path.read_text() + '{"id": "x", "question": "q"}\n')
    with pytest.raises(DataError, match=r"line 5 is not a QA item \(missing \['answer', 'answer_type'\]"):
        read_items(path)


# ------------------------------------------------------------------ model output

@pytest.mark.parametrize("text", ["", "\n" * 4_000_000, " \n- * `\n" * 500_000, "Action: type(" + '"a",' * 1_000_000,
                                  "Answer: " + "7 8 " * 1_000_000], ids=["nothing", "newlines", "markdown", "args",
                                                                       "answer"])
def test_model_output_of_megabytes_or_nothing_is_a_failed_step_in_linear_time(text, dataset):
    """Empty or megabyte outputs are unparsable (a failed step, wrong answer), in well under a second per MB:
    the action grammar once took quadratic time on blank lines (minutes for 1 MB)."""
    from envs.miniwob.actions import ActionError, parse_action

    t = time.perf_counter()
    with pytest.raises(ActionError):
        parse_action(text)
    env = QAEnv("synth_table", read_items(dataset / "train.jsonl"), dataset, text_context=False, breakdown=())
    env.reset(options={"task_id": env.episodes()[0][0]})
    _, reward, done, _, info = env.step(text)
    assert done and reward == 0.0 and info["parsed"] is None  # unparsable ("7 8 7 8 ...": a hedge), never a pick
    assert time.perf_counter() - t < 5


def test_megabyte_action_in_a_real_browser_is_a_failed_step(tmp_path):
    from envs.miniwob import MiniWoBEnv

    env = MiniWoBEnv(image_dir=tmp_path, max_steps=3)
    try:
        env.reset(seed=0, options={"task_id": "click-test"})
        for text in ("", "\n" * 2_000_000 + "Action: click(ref=", "Action: " + "x" * 1_000_000):
            t = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(text)
            assert info["error"].startswith("invalid action") and reward == 0.0 and not terminated
            assert time.perf_counter() - t < 5
        assert truncated  # the step budget (3) is spent: the episode ends, unsolved
    finally:
        env.close()
    assert not env.browser_pids


# ------------------------------------------------------------------ prompts longer than the context

def test_prompt_longer_than_the_context_is_a_counted_skip(tiny):
    """Generation: a prompt past the model's context (4096 positions for the tiny model) is not completed from
    positions the model never saw; it gets an empty answer and is counted. Training: a prompt over
    train.max_length is cut or skipped, and counted (reflection/train.py)."""
    from agent.prompts import Prompts
    from envs.episode import Observation
    from helpers import PROMPTS, make_policy

    assert isinstance(PROMPTS, Prompts)
    policy = make_policy(*tiny, max_new_tokens=4)
    short = PROMPTS.cot_prompt(Observation(text="What is 2 + 2?", answer_format="Answer: <number>"))
    long = PROMPTS.cot_prompt(Observation(text="word " * 6000, answer_format="Answer: <number>"))
    t = time.perf_counter()
    out = policy.generate([short, long, short], n=2)
    assert out[1] == ["", ""] and len(out[0]) == len(out[2]) == 2
    assert policy.overlong_prompts == 1 and policy.context_length == 4096
    assert time.perf_counter() - t < 10  # not 6,000 tokens of prefill


def test_training_prompt_longer_than_max_length_is_cut_and_counted(tiny, dataset):
    from agent.models import add_adapter
    from omegaconf import OmegaConf
    from reflection.examples import Sample
    from reflection.train import TrainConfig, train

    from agent.offline_models import build_tiny

    model, processor = build_tiny()
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml")
    model = add_adapter(model, cfg)
    image = str(sorted((dataset / "images").iterdir())[0])
    long = [{"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": "word " * 400}]}]
    huge_target = "x " * 400
    samples = [Sample(long, "Answer: 1", "sft"), Sample(long, huge_target, "sft"), Sample(long[:1], "Answer: 2", "qa")]
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        full = compose(config_name="config", overrides=["model=tiny", "env=synth_table"])
    tc = TrainConfig(**{**OmegaConf.to_container(full.train, resolve=True), "epochs": 1, "batch_size": 3,
                        "max_length": 128, "seed": 0})
    stats = train(model, processor, samples, tc, [], desc="hostile")
    assert stats["skipped_examples"] == 1 and stats["truncated_examples"] >= 1


# ------------------------------------------------------------------ a MiniWoB page that never loads

@pytest.fixture()
def silent_server():
    """A local HTTP address that accepts connections and never answers: a page that never loads."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    server.close()


def test_page_that_never_loads_fails_the_episode_within_the_watchdog(tmp_path, monkeypatch, silent_server):
    """miniwob loads a task page with no time limit of its own (chromedriver waits 300 s): the launch watchdog
    (3 x env.call_timeout) kills the browser, retries once, then the episode fails (EnvFailure, which a rollout
    records as a failed episode); no browser process is left."""
    import envs.miniwob.env as mwenv
    from envs.browser import MARKER
    from envs.episode import EnvFailure

    make = mwenv.gym.make
    monkeypatch.setattr(mwenv.gym, "make", lambda *a, **kw: make(*a, base_url=silent_server, **kw))
    env = mwenv.MiniWoBEnv(image_dir=tmp_path, call_timeout=2.0)
    t = time.perf_counter()
    with pytest.raises(EnvFailure, match=r"failed twice on reset: TimeoutError: the click-test page did not load "
                                         r"within 6 s \(3 x env.call_timeout\)"):
        env.reset(seed=0, options={"task_id": "click-test"})
    assert time.perf_counter() - t < 40  # two starts of 6 s each (+ process start and kill), not 2 x 300 s
    env.close()
    time.sleep(0.5)
    prefix = f"{os.getpid()}-"
    left = [p.pid for p in psutil.process_iter(["environ", "status"])
            if (p.info["environ"] or {}).get(MARKER, "").startswith(prefix) and p.info["status"] != "zombie"]
    assert not left


def test_page_that_hangs_mid_episode_costs_one_call_timeout(tmp_path):
    """A renderer that stops answering (SIGSTOP) fails the step after one env.call_timeout: selenium's HTTP client
    would retry a timed-out GET 3 times (4 x the timeout); the env turns those retries off."""
    import signal

    from envs.miniwob import MiniWoBEnv

    env = MiniWoBEnv(image_dir=tmp_path, call_timeout=2.0)
    try:
        env.reset(seed=0, options={"task_id": "click-test"})
        renderers = [p for p in env.browser_pids if "--type=renderer" in " ".join(psutil.Process(p).cmdline())]
        assert renderers
        for pid in renderers:
            os.kill(pid, signal.SIGSTOP)
        driver = env._gym.unwrapped.instance.driver
        t = time.perf_counter()
        with pytest.raises(Exception, match="Read timed out"):
            driver.get_screenshot_as_png()  # a GET: the one urllib3 would retry
        assert time.perf_counter() - t < 4
        _, reward, terminated, _, info = env.step(env.teacher())
        assert terminated and reward == 0.0 and info["error"].startswith("browser crashed")
        env.reset(seed=1, options={"task_id": "click-test"})  # a new browser
        assert not set(renderers) & env.browser_pids
    finally:
        env.close()
    assert not env.browser_pids


# ------------------------------------------------------------------ disk full, newer schema, foreign adapter

def test_disk_full_on_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import envs.files
    from reflection.pool import read_jsonl, write_jsonl

    path = tmp_path / "iter_0" / "metrics_eval.jsonl"
    write_jsonl(path, [{"a": 1}])
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(envs.files.os, "fdopen", lambda *a, **kw: Full(real_fdopen(*a, **kw)))
    with pytest.raises(envs.files.DiskFull, match=rf"No space left on device while writing {path} \(it is unchanged\)"):
        write_jsonl(path, [{"a": 2}])
    monkeypatch.undo()
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_disk_full_run_stops_with_one_line_then_resumes(tmp_path):
    """The command line: ENOSPC while the evaluation writes its records -> exit 1 with one line naming the file;
    the same command afterwards resumes and finishes."""
    run_dir = tmp_path / "run"
    prelude = (
        "import errno, os, envs.files as f\n"
        "orig = f.os.replace\n"
        "def replace(src, dst):\n"
        "    if str(dst).endswith('eval.jsonl'):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return orig(src, dst)\n"
        "f.os.replace = replace\n"
    )
    args = [*RUN, f"run_dir={run_dir}"]
    line = one_line_error(run_cli(*args, cwd=tmp_path, prelude=prelude))
    assert f"No space left on device while writing {run_dir}/iter_0/eval.jsonl" in line and "resume" in line
    assert not list(run_dir.rglob(".*.tmp"))
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(json.loads(r)["metric"] == "test@1" for r in (run_dir / "metrics.jsonl").read_text().splitlines())


def test_run_dir_from_a_newer_schema_is_refused_naming_the_file(tmp_path):
    run_dir = tmp_path / "run"
    args = [*RUN, f"run_dir={run_dir}"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    teacher = run_dir / "iter_0" / "teacher.jsonl"
    rows = [json.loads(r) for r in teacher.read_text().splitlines()]
    teacher.write_text("".join(json.dumps({**r, "schema": 2}) + "\n" for r in rows))
    line = one_line_error(run_cli(*args, cwd=tmp_path))
    assert f"{teacher}: trajectory record of schema version 2" in line


def test_adapter_from_another_base_model_is_refused(tmp_path):
    """An adapter records its base model (base_model.json); evaluating or continuing it on another base stops
    with both named, instead of peft's shape errors or, for equal shapes, a silently wrong model."""
    from omegaconf import OmegaConf

    from agent.models import BASE_MODEL_FILE, add_adapter, load_backbone, load_for_inference, save_adapter

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml")
    model, _ = load_backbone(cfg)
    adapter = tmp_path / "adapter"
    save_adapter(add_adapter(model, cfg), adapter, [])
    assert json.loads((adapter / BASE_MODEL_FILE).read_text())["model_type"] == "qwen2_vl"
    load_for_inference(cfg, adapter)  # its own base: fine
    other = OmegaConf.merge(cfg, {"tiny": {"hidden_size": 32}})
    with pytest.raises(ValueError, match=rf"adapter {adapter} was trained on another base model: qwen2_vl .* but "
                                         r"this run's model is qwen2_vl"):
        load_for_inference(other, adapter)
    with pytest.raises(ValueError, match="trained on another base model"):
        add_adapter(load_backbone(other)[0], other, init_from=adapter)
    line = one_line_error(run_cli(*RUN, f"run_dir={tmp_path / 'eval'}", "mode=eval", f"adapter={adapter}",
                                  "model.tiny.hidden_size=32", cwd=tmp_path))
    assert f"adapter {adapter} was trained on another base model" in line
