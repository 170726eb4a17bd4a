"""Hidden-state distillation (llavakit.train.distill and the recipe's ``distill:`` section)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from loop_helpers import ColorDataset, collate_fn, tiny_recipe

from llavakit.model.llava import IGNORE_INDEX, LlavaModel
from llavakit.tiny import write_tiny_checkpoint
from llavakit.train.build import build_model
from llavakit.train.checkpointing import check_same_recipe, recipe_record
from llavakit.train.distill import Distiller, marker_id, turn_positions
from llavakit.train.loop import train
from llavakit.train.recipe import ModelSpec, RecipeError

F, T = False, True


def _labelled(ids: list[int], answers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ids_t = torch.tensor([ids])
    labels = torch.full_like(ids_t, IGNORE_INDEX)
    labels[0, answers] = ids_t[0, answers]
    return ids_t, labels


def test_turn_positions_worked_example() -> None:
    # [s, Q1, Q2, A1, A2, Q3, M, A3, end]: answers at 3, 4 and 7; the marker M (99) in the second turn's prompt
    ids, labels = _labelled([1, 10, 11, 20, 21, 12, 99, 22, 2], [3, 4, 7])
    assert turn_positions(ids, labels, 99, ()).tolist() == [[F, F, F, F, F, T, T, T, F]]
    assert turn_positions(ids, labels, None, ()).tolist() == [[T, T, T, T, T, T, T, T, F]]  # never the end
    assert turn_positions(ids, labels, 12, (99,)).tolist() == [[F, F, F, F, F, T, F, T, F]]  # skipped tokens out
    assert not turn_positions(ids, labels, 22, ()).any()  # the marker in an answer does not choose its turn
    assert not turn_positions(ids, labels, 7, ()).any()  # a marker nowhere chooses nothing


def test_turn_positions_row_by_row() -> None:
    ids = torch.tensor([[5, 99, 30, 0, 0], [5, 6, 30, 31, 0]])  # padded batch; only the first row has the marker
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], labels[1, 2:4] = 30, ids[1, 2:4]
    assert turn_positions(ids, labels, 99, ()).tolist() == [[T, T, T, F, F], [F, F, F, F, F]]


def _batch(processor, n: int = 4) -> tuple[dict, torch.Tensor]:
    items = [ColorDataset(processor, n)[i] for i in range(n)]
    batch = collate_fn(items)
    keys = ("input_ids", "attention_mask", "pixel_values", "image_sizes")
    return {k: batch[k] for k in keys if batch.get(k) is not None}, batch["labels"]


def _hidden(model, inputs) -> list[torch.Tensor]:
    """Each decoder layer's output, by hooks of this test's own."""
    out: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda m, a, o: out.append(o[0] if isinstance(o, tuple) else o))
        for layer in model.model.language_model.layers
    ]
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_the_term_matches_a_reference_and_trains_the_student_only(family: str) -> None:
    student, processor = build_model(ModelSpec(init=f"tiny:{family}"))
    teacher, _ = build_model(ModelSpec(init=f"tiny:{family}", seed=1))
    inputs, labels = _batch(processor)
    distiller = Distiller(teacher, student, weight=3.0, marker=None)
    student(**inputs)
    term = distiller.loss(inputs, labels)
    # the reference: every text position up to each row's last answer, image tokens out, layer by layer
    chosen = turn_positions(inputs["input_ids"], labels, None, (student.config.image_token_id,))
    assert chosen.sum() > 0 and not chosen[inputs["input_ids"] == student.config.image_token_id].any()
    ref = 0.0
    for h, t in zip(_hidden(student, inputs), _hidden(teacher, inputs)):
        ref += float(((h[chosen] - t[chosen]) ** 2).sum() / (t[chosen] ** 2).sum(-1).mean())
    assert term.item() == pytest.approx(3.0 * ref / len(student.model.language_model.layers), rel=1e-5)
    term.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.model.language_model.parameters())
    # against itself the term is zero
    distiller.close()
    twin = Distiller(copy.deepcopy(student), student, weight=3.0, marker=None)
    student(**inputs)
    assert twin.loss(inputs, labels).item() == 0.0
    twin.close()
    assert all(not layer._forward_hooks for layer in student.model.language_model.layers)


def test_a_teacher_of_another_shape_is_refused_by_name() -> None:
    student, _ = build_model(ModelSpec(init="tiny:llava"))
    teacher = copy.deepcopy(student)
    del teacher.model.language_model.layers[1]
    with pytest.raises(ValueError, match=r"decoder layers 1 \(the student: 2\).*student's shape"):
        Distiller(teacher, student, weight=1.0, marker=None)
    teacher = copy.deepcopy(student)
    teacher.config.image_token_id += 1
    with pytest.raises(ValueError, match=r"differs from the model it teaches: image token id"):
        Distiller(teacher, student, weight=1.0, marker=None)


def test_turns_with_must_be_one_token() -> None:
    _, processor = build_model(ModelSpec(init="tiny:llava"))  # a character tokenizer: " C" is two tokens
    assert marker_id(processor, None) is None
    assert marker_id(processor, "C") == processor.tokenizer.encode("C", add_special_tokens=False)[0]
    with pytest.raises(ValueError, match=r"distill.turns_with 'Co' is 3 tokens .*one token after another word"):
        marker_id(processor, "Co")


class _Table:
    """A tokenizer given by its encodings of the strings the lookup asks for."""

    def __init__(self, table: dict[str, list[int]]) -> None:
        self.table = table

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.table[text]


# SentencePiece adds the space itself ("▁many"; " many" alone is "▁", "▁many"); a byte-level BPE keeps the space
# with the word after it (" many" one token, "many" two)
SENTENCEPIECE = _Table({"a": [1], "a many": [1, 5], "many": [5], " many": [9, 5]})
BYTE_BPE = _Table({"a": [1], "a many": [1, 2], "many": [3, 4], " many": [2]})


@pytest.mark.parametrize("tokenizer, want", [(SENTENCEPIECE, 5), (BYTE_BPE, 2)])
def test_turns_with_finds_the_word_as_written_mid_sentence(tokenizer, want) -> None:
    processor = type("P", (), {"tokenizer": tokenizer})()
    assert marker_id(processor, "many") == marker_id(processor, " many") == want


def test_the_term_of_the_worked_example() -> None:
    """The module docstring's example, by hand: one layer, three positions; 6 / (5 / 3) = 3.6, times the weight."""
    from types import SimpleNamespace

    from torch import nn

    class Fixed(nn.Module):
        def __init__(self, out: list[list[float]]) -> None:
            super().__init__()
            self.out = torch.tensor([out], dtype=torch.float32)  # (1, 3, 2)

        def forward(self) -> torch.Tensor:
            return self.out

    class Fake(nn.Module):
        def __init__(self, out: list[list[float]]) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Fixed(out)])
            self.model = SimpleNamespace(language_model=SimpleNamespace(layers=self.layers))
            self.config = SimpleNamespace(text=SimpleNamespace(hidden_size=2, vocab_size=10), image_token_id=9)

        def forward(self, **kw) -> None:  # noqa: ANN003
            for layer in self.layers:
                layer()

    student, teacher = Fake([[1, 0], [0, 0], [2, 2]]), Fake([[0, 0], [0, 1], [2, 0]])
    ids, labels = _labelled([1, 5, 6], [2])
    distiller = Distiller(teacher, student, weight=2.0, marker=None)
    student(input_ids=ids)
    assert distiller.loss({"input_ids": ids}, labels).item() == pytest.approx(7.2)


def test_recipe_section_checks(tmp_path) -> None:
    with pytest.raises(RecipeError, match="distill.weight"):
        tiny_recipe(tmp_path, "llava", "distill.teacher=/t", "distill.weight=0")
    for alone in ("distill.weight=2", "distill.turns_with=many"):
        with pytest.raises(RecipeError, match="apply only with distill.teacher"):
            tiny_recipe(tmp_path, "llava", alone)
    with pytest.raises(RecipeError, match="train.distributed=fsdp"):
        tiny_recipe(tmp_path, "llava", "distill.teacher=/t", "train.distributed=fsdp")
    with pytest.raises(ValueError, match="did you mean distill.teacher"):
        tiny_recipe(tmp_path, "llava", "distill.teachr=/t")
    assert tiny_recipe(tmp_path, "llava").distill.teacher is None  # off by default


def test_a_run_recorded_before_the_distill_section_still_resumes(tmp_path) -> None:
    """recipe.json of runs from before the section lacks it: its keys count as their defaults there (and only
    its: another key missing from a record is still a difference)."""
    old = recipe_record(tiny_recipe(tmp_path, "llava"))
    del old["distill"]
    check_same_recipe(tmp_path / "recipe.json", tiny_recipe(tmp_path, "llava"), old, tmp_path / "step")
    with pytest.raises(ValueError, match="distill.teacher None there, '/t' now"):
        check_same_recipe(tmp_path / "recipe.json", tiny_recipe(tmp_path, "llava", "distill.teacher=/t"), old)
    del old["train"]["schedule"]
    with pytest.raises(ValueError, match="train.schedule None there, 'cosine' now"):
        check_same_recipe(tmp_path / "recipe.json", tiny_recipe(tmp_path, "llava"), old)


def test_a_distilled_run_resumes_only_with_its_micro_batch(tmp_path) -> None:
    """The term's normaliser is the micro-batch's: the split that a plain run may change is part of the result."""
    teacher = {"distill.teacher": str(tmp_path / "t")}
    was = recipe_record(tiny_recipe(tmp_path, "llava", *(f"{k}={v}" for k, v in teacher.items())))
    now = tiny_recipe(tmp_path, "llava", "train.micro_batch_size=4", f"distill.teacher={tmp_path / 't'}")
    with pytest.raises(ValueError, match="train.micro_batch_size 2 there, 4 now"):
        check_same_recipe(tmp_path / "recipe.json", now, was)
    plain = recipe_record(tiny_recipe(tmp_path, "llava"))
    check_same_recipe(tmp_path / "recipe.json", tiny_recipe(tmp_path, "llava", "train.micro_batch_size=4"), plain)


def _distance(model, teacher, processor) -> float:
    inputs, labels = _batch(processor, 8)
    d = Distiller(teacher, model, weight=1.0, marker=None)
    with torch.no_grad():
        model(**inputs)
        value = d.loss(inputs, labels).item()
    d.close()
    return value


def test_training_with_a_teacher_pulls_the_student_to_it(tmp_path) -> None:
    teacher = LlavaModel.from_pretrained(write_tiny_checkpoint(tmp_path / "teacher", "llava", seed=1))
    runs = {}
    for name, extra in (("plain", ()), ("pulled", (f"distill.teacher={tmp_path / 'teacher'}", "distill.weight=5"))):
        recipe = tiny_recipe(tmp_path / name, "llava", "train.max_steps=12", *extra)
        model, proc = build_model(recipe.model)
        before = _distance(model, teacher, proc)
        train(recipe, model=model, processor=proc, dataset=ColorDataset(proc, 12), collate_fn=collate_fn)
        assert all(not layer._forward_hooks for layer in model.model.language_model.layers)  # hooks came off
        runs[name] = _distance(model, teacher, proc)
        logged = [json.loads(x) for x in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        assert ("distill" in logged[0]) == (name == "pulled")
    assert runs["pulled"] < 0.5 * before and runs["pulled"] < 0.5 * runs["plain"], (before, runs)
    assert logged[-1]["distill"] < logged[0]["distill"]


def test_with_gradient_checkpointing_the_distilled_run_is_the_same(tmp_path) -> None:
    """Checkpointed layers run again in the backward pass (their forward called directly: the hooks see only the
    forward's outputs, the term's inputs): the distilled run is the plain one, loss for loss."""
    write_tiny_checkpoint(tmp_path / "teacher", "llava_next", seed=1)  # the weights of tiny:llava_next seed 1
    losses = []
    for name, extra in (("plain", ()), ("checkpointed", ("train.gradient_checkpointing=true",))):
        pulled = (f"distill.teacher={tmp_path / 'teacher'}", "distill.weight=5", *extra)
        recipe = tiny_recipe(tmp_path / name, "llava_next", "train.max_steps=4", *pulled)
        model, proc = build_model(recipe.model)
        train(recipe, model=model, processor=proc, dataset=ColorDataset(proc, 8), collate_fn=collate_fn)
        logged = [json.loads(x) for x in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        losses.append([(r["loss"], r["distill"]) for r in logged])
    assert losses[0] == losses[1] and losses[0][-1][1] > 0


def test_a_callback_running_the_model_between_steps_does_not_disturb_the_term(tmp_path) -> None:
    """Only the training forward's layer outputs enter the term: a forward in a step callback (an evaluation, say)
    is dropped at the next forward, and the run is the same as without it."""
    write_tiny_checkpoint(tmp_path / "teacher", "llava", seed=1)  # the weights of tiny:llava seed 1
    losses = []
    for name in ("quiet", "evaluating"):
        recipe = tiny_recipe(tmp_path / name, "llava", "train.max_steps=3", f"distill.teacher={tmp_path / 'teacher'}")
        model, proc = build_model(recipe.model)
        inputs, _ = _batch(proc, 2)

        def evaluate(step: int, m, inputs: dict = inputs) -> None:  # noqa: ANN001
            with torch.no_grad():
                m(**inputs)

        callbacks = [evaluate] if name == "evaluating" else []
        res = train(recipe, model=model, processor=proc, dataset=ColorDataset(proc, 8), collate_fn=collate_fn,
                    callbacks=callbacks)  # fmt: skip
        losses.append(res.losses)
    assert losses[0] == losses[1]


def test_the_hooks_come_off_when_the_run_fails(tmp_path) -> None:
    write_tiny_checkpoint(tmp_path / "teacher", "llava", seed=1)  # the weights of tiny:llava seed 1
    recipe = tiny_recipe(tmp_path, "llava", f"distill.teacher={tmp_path / 'teacher'}")
    model, proc = build_model(recipe.model)
    data = ColorDataset(proc, 8)
    for item in data.items:
        item["labels"][:] = IGNORE_INDEX
    with pytest.raises(ValueError, match="no supervised tokens"):
        train(recipe, model=model, processor=proc, dataset=data, collate_fn=collate_fn)
    assert not model._forward_pre_hooks and all(not la._forward_hooks for la in model.model.language_model.layers)
