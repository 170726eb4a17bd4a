"""`llava train` refuses an output directory it would overwrite: model.init itself (or inside / around it), or a
finished run's directory when not resuming. Before, both were silently replaced (the base weights included)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_run_helpers import write_recipe

from llavakit.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished tiny run (config.json + model.safetensors, no checkpoints/) and its recipe."""
    root = tmp_path_factory.mktemp("base")
    recipe = write_recipe(root, root / "model")
    assert main(["train", str(recipe)]) == 0
    return root / "model", recipe


@pytest.mark.parametrize("where, said", [(".", "is model.init"), ("sub", "is inside model.init"),
                                         ("../..", "writes into model.init")])  # fmt: skip
def test_output_dir_at_model_init_is_refused_and_its_weights_kept(tmp_path, capsys, base, where, said):
    model, recipe = base
    copy = tmp_path / "copy" / "checkpoints" / "model"  # "../..": the run's checkpoints/ would hold model.init
    shutil.copytree(model, copy)
    before = (copy / "model.safetensors").read_bytes()
    out = (copy / where).resolve()
    assert main(["train", str(recipe), f"model.init={copy}", f"train.output_dir={out}", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert f"train.output_dir {out} {said} {copy}" in err and "choose a fresh train.output_dir" in err
    assert (copy / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in model.iterdir())


def test_a_finished_run_is_not_started_again_over_itself(capsys, base):
    model, recipe = base
    before = (model / "model.safetensors").read_bytes()
    assert main(["train", str(recipe), "train.seed=7"]) == 2
    err = capsys.readouterr().err
    assert f"{model} already holds a trained model (config.json, model.safetensors)" in err
    assert "Choose a fresh train.output_dir, or delete that directory first" in err
    assert (model / "model.safetensors").read_bytes() == before


def test_a_finished_run_with_checkpoints_still_resumes(tmp_path, capsys):
    recipe = write_recipe(tmp_path, tmp_path / "run", "save_every: 1")
    assert main(["train", str(recipe)]) == 0  # 3 steps; checkpoints at steps 1 and 2, the model at 3
    assert main(["train", str(recipe), "--resume"]) == 0  # step 3 again from the step-2 checkpoint
    assert main(["train", str(recipe)]) == 2  # without --resume: refused (checkpoints of an earlier run)
    assert "already holds checkpoints of an earlier run (step-00000002); resume it" in capsys.readouterr().err


def test_a_parent_of_model_init_is_a_fine_output_dir(tmp_path, base):
    """Training writes its files beside model.init there, not into it (it was refused as 'contains model.init')."""
    model, recipe = base
    copy = tmp_path / "runs" / "stage1"
    shutil.copytree(model, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    out = tmp_path / "runs"
    assert main(["train", str(recipe), f"model.init={copy}", f"train.output_dir={out}", "train.max_steps=2"]) == 0
    assert (out / "model.safetensors").is_file()
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_an_output_dir_that_cannot_be_a_directory_is_named_before_loading(tmp_path, capsys, base, monkeypatch):
    """A file, a path inside a file, or a directory the system will not create: one line naming
    train.output_dir, before the model or data are read (a bare '[Errno 17] File exists' after loading before)."""
    _, recipe = base
    file = tmp_path / "good.png"
    file.write_bytes(b"not a directory")
    monkeypatch.setattr("llavakit.train.build.build_model", lambda *a, **k: pytest.fail("the model was read"))
    cases = [(file, "is a file, not a directory"), (file / "sub", f"lies inside {file}, which is a file")]
    cases += [(tmp_path / "ro" / "new" / "run", "cannot be created")]
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    # root ignores the mode: refuse as a read-only file system does
    monkeypatch.setattr("os.mkdir", _hooked_mkdir(tmp_path / "ro", _denied))
    for out, said in cases:
        assert main(["train", str(recipe), f"train.output_dir={out}"]) == 2
        err = capsys.readouterr().err
        assert f"train.output_dir {out} {said}" in err and "choose a directory you can write" in err
        assert "Traceback" not in err
    assert not (tmp_path / "ro" / "new").exists()
    made = tmp_path / "a" / "b" / "run"
    from llavakit.train.output_dir import check_can_create

    check_can_create(made)  # fine, and nothing left behind
    assert not (tmp_path / "a").exists()
    hidden = tmp_path / "hidden"  # a parent this user may not read: stat() itself raises
    real_stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda p, **kw: _denied(p) if hidden in (p, *p.parents) else real_stat(p, **kw))
    with pytest.raises(ValueError, match=f"train.output_dir {hidden / 'run'} cannot be created .*Permission denied"):
        check_can_create(hidden / "run")


def _denied(path):
    raise PermissionError(13, "Permission denied", str(path))


def _hooked_mkdir(target, hook):
    """os.mkdir that first calls ``hook(path)`` when asked for ``target`` or a directory inside it (the hook may
    raise: another rank's doing, or the system's), then makes it."""
    import os

    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if target in (Path(path), *Path(path).parents):
            hook(path)
        return real(path, *args, **kwargs)

    return mkdir


def test_a_directory_another_rank_makes_and_removes_is_taken_as_made(tmp_path, monkeypatch):
    """Under torchrun every rank checks at once: one rank's mkdir can meet EEXIST for the directory another rank's
    check just made, which that rank removes before anyone looks again. CI saw that once as 'cannot be created
    (File exists)' in a two-process run (pathlib's exist_ok re-checks is_dir() after EEXIST). The check takes it as
    made."""
    from llavakit.train.output_dir import check_can_create

    out, raced = tmp_path / "a" / "run", []

    def made_and_removed_by_another_rank(path):
        if not raced:
            raced.append(path)
            raise FileExistsError(17, "File exists", str(path))

    monkeypatch.setattr("os.mkdir", _hooked_mkdir(out, made_and_removed_by_another_rank))
    check_can_create(out)
    assert raced and not (tmp_path / "a").exists()


def test_a_parent_another_rank_removes_is_looked_for_again(tmp_path, monkeypatch):
    """The other interleaving: another rank removes the parent this rank found (or took as made) before this rank's
    mkdir inside it, which meets ENOENT: the check looks again and makes both."""
    import os

    from llavakit.train.output_dir import check_can_create

    out, raced = tmp_path / "a" / "run", []

    def parent_removed_by_another_rank(path):
        if not raced:
            raced.append(path)
            os.rmdir(out.parent)  # the other rank's clean-up

    monkeypatch.setattr("os.mkdir", _hooked_mkdir(out, parent_removed_by_another_rank))
    check_can_create(out)
    assert raced and not (tmp_path / "a").exists()


def test_a_parent_that_keeps_vanishing_is_named_with_its_fix(tmp_path, monkeypatch):
    """Something removing the parent on every try (no rank's check does that forever): after the tries, one line
    naming train.output_dir, what happened and the fix, and nothing left behind."""
    import os

    from llavakit.train.output_dir import TRIES, check_can_create

    out = tmp_path / "a" / "run"
    monkeypatch.setattr("os.mkdir", _hooked_mkdir(out, lambda path: os.rmdir(out.parent)))
    said = f"train.output_dir {out} cannot be created: its parent directories were removed while it was made, {TRIES}"
    with pytest.raises(ValueError, match=f"{said} times .*run again, or make it first .mkdir -p {out}."):
        check_can_create(out)
    assert not (tmp_path / "a").exists()


def test_a_deeper_directory_refused_by_the_system_leaves_nothing_behind(tmp_path, monkeypatch):
    """A disk that fills (or a quota met) between two of the directories an output_dir needs: refused with the
    system's reason, and the directories already made are removed again."""
    import errno

    from llavakit.train.output_dir import check_can_create

    out = tmp_path / "a" / "run"

    def disk_full_once_the_parent_is_made(path):
        if out.parent.is_dir():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("os.mkdir", _hooked_mkdir(out, disk_full_once_the_parent_is_made))
    with pytest.raises(ValueError, match=f"train.output_dir {out} cannot be created .No space left on device."):
        check_can_create(out)
    assert not (tmp_path / "a").exists()


def _check_many(base: str, n: int, barrier, errors) -> None:
    from llavakit.train.output_dir import check_can_create

    for i in range(n):
        barrier.wait()  # every process checks the same new directory at the same moment
        try:
            check_can_create(Path(base) / f"r{i}" / "run")
        except ValueError as e:
            errors.put(str(e))


def test_ranks_checking_at_once_never_refuse_a_directory_they_can_make(tmp_path):
    """Three processes check the same 400 new two-level directories in lockstep (what torchrun's ranks do once):
    none is refused, and at most empty directories stay behind (none is removed while another's is inside it). The
    check before session 44's looked with exists() then is_dir() and refused 22-92 of 3000 such checks (two
    processes) as 'is a file', 'lies inside ... a file' or 'cannot be created (File exists)'."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(3, timeout=30), ctx.Queue()  # a process that died breaks it: no hang
    procs = [ctx.Process(target=_check_many, args=(str(tmp_path), 400, barrier, errors)) for _ in range(3)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    refused = []
    while not errors.empty():
        refused.append(errors.get())
    assert refused == []
    assert all(p.is_dir() for p in tmp_path.rglob("*"))
