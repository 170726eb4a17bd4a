"""Hidden-state distillation: a frozen teacher of the student's shape, whose decoder layers' outputs the student's
are pulled to at the text positions of chosen turns (the recipe's ``distill:`` section).

Why (docs/default-model.md, "Distilling the count passes' hidden states into the last pass"): the tiny recipe's
count passes build a counting the last plain pass then loses; matching that pass's hidden states to the count
passes' at the count turns keeps most of it. The term added to a micro-batch's CE sum is

    weight * mean over layers l of  sum_{p in P} |h_l(p) - t_l(p)|^2 / mean_{p in P} |t_l(p)|^2

with ``h`` the student's and ``t`` the teacher's layer outputs and ``P`` the positions of ``turn_positions`` in the
micro-batch; the loop divides it by the global batch's supervised tokens as it does the CE sum. Each position's
squared distance is thus measured against the teacher's mean squared norm there, so the term is free of the hidden
states' scale. That mean is the micro-batch's, so unlike the CE the term depends on how the global batch is split:
a distilled run resumes only with the micro-batch size and process count it ran with (``check_same_recipe``).

Worked example: one layer, three chosen positions, h = [1, 0], [0, 0], [2, 2] and t = [0, 0], [0, 1], [2, 0]: the
squared distances 1, 1, 4 sum to 6, the teacher's squared norms 0, 1, 4 average 5/3, so the term is weight * 3.6.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..model.llava import IGNORE_INDEX, LlavaModel


def turn_positions(ids: torch.Tensor, labels: torch.Tensor, marker: int | None, skip: tuple[int, ...]) -> torch.Tensor:
    """(B, T) bool: the positions of the turns whose prompt holds token ``marker`` (every turn when None), from
    the end of the answer before (a first turn: from the start) through the turn's own answer, tokens in ``skip``
    (image and video placeholders) left out.

    Worked example: ids [s, Q1, Q2, A1, A2, Q3, M, A3] with the answers A1 A2 and A3 supervised (labels other than
    -100 there) and marker M: the second turn's prompt [Q3, M] holds it, so positions 5-7 ([Q3, M, A3]) are
    chosen; with marker None every position 0-7 is. Positions after the last answer (the end of the text, padding)
    are never chosen.
    """
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    supervised = (labels != IGNORE_INDEX).tolist()
    for i, row in enumerate(supervised):
        start = a = 0  # start: where the current turn's prompt begins; a: scans for its answer
        while a < len(row):
            if not row[a]:
                a += 1
                continue
            b = a
            while b < len(row) and row[b]:
                b += 1  # [a, b): the answer
            if marker is None or bool((ids[i, start:a] == marker).any()):
                chosen[i, start:b] = True
            start = a = b
    for token in skip:
        chosen &= ids != token
    return chosen


class Distiller:
    """The teacher, the hooks that capture both models' decoder-layer outputs, and the term of the module docstring.

    distiller = Distiller(teacher, student, weight=2.0, marker=486)  # the student before any DDP wrapping
    loss = ce_sum + distiller.loss(inputs, labels)  # right after the student's forward on ``inputs``
    """

    def __init__(self, teacher: LlavaModel, student: LlavaModel, weight: float, marker: int | None) -> None:
        t_layers, s_layers = teacher.model.language_model.layers, student.model.language_model.layers
        check_teacher(teacher, student)
        self.teacher, self.weight, self.marker = teacher.eval().requires_grad_(False), weight, marker
        config = student.config
        self.skip = tuple(t for t in (config.image_token_id, getattr(config, "video_token_id", None)) if t is not None)
        self.n = len(s_layers)
        self.student_out: list[torch.Tensor] = []
        self.teacher_out: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._keep(self.student_out)) for layer in s_layers]
        self.handles += [layer.register_forward_hook(self._keep(self.teacher_out)) for layer in t_layers]
        self.handles.append(student.register_forward_pre_hook(lambda module, args: self.student_out.clear()))

    @staticmethod
    def _keep(into: list[torch.Tensor]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            into.append(output[0] if isinstance(output, tuple) else output)

        return hook

    def loss(self, inputs: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
        """The weighted term for the micro-batch the student has just run on (``inputs``: its forward's keyword
        arguments, ``labels``: (B, T)); a zero when no position of it is chosen."""
        student, self.student_out[:] = list(self.student_out), []  # (B, T, D) each, of the last forward only
        if len(student) != self.n:  # each layer called once in it
            raise RuntimeError(f"distill: captured {len(student)} student layer outputs, expected {self.n}")
        chosen = turn_positions(inputs["input_ids"], labels, self.marker, self.skip)  # (B, T)
        if not chosen.any():
            return torch.zeros((), device=labels.device)
        self.teacher_out.clear()
        with torch.no_grad():
            self.teacher(**inputs, logits_mask=chosen)
        total = 0.0
        for h, t in zip(student, self.teacher_out):
            s, tt = h[chosen], t[chosen]  # (P, D)
            total = total + ((s - tt) ** 2).sum(-1).sum() / (tt**2).sum(-1).mean()
        self.teacher_out.clear()
        return self.weight * (total / self.n)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def from_recipe(spec: Any, student: LlavaModel, processor: Any, device: torch.device) -> Distiller | None:
    """The recipe's ``distill:`` section (``DistillSpec``) for the loop: its teacher loaded frozen on ``device`` and
    hooked with ``student`` (the model before any wrapping); None without a teacher."""
    if not spec.teacher:
        return None
    marker = marker_id(processor, spec.turns_with)  # before the teacher loads: a bad token fails fast
    teacher = LlavaModel.from_pretrained(spec.teacher, dtype=torch.float32, device=device)  # filled there directly
    return Distiller(teacher, student, spec.weight, marker)


def check_same_split(spec: Any, saved_world: int, world: int, checkpoint: str) -> None:
    """Resuming a distilled run (``spec``: the recipe's ``distill`` section) on another number of processes is
    refused: the term is normalised per micro-batch, so the split decides it. The micro-batch size is
    ``checkpointing.check_same_recipe``'s to compare; the process count only the checkpoint's counters know."""
    if spec.teacher and saved_world != world:
        raise ValueError(
            f"train.resume: {checkpoint} was written by a distilled run on {saved_world} process(es), and this one "
            f"has {world}; the distillation term is normalised per micro-batch, so resume on {saved_world} (or start "
            "a new train.output_dir from that checkpoint's weights)"
        )


def check_teacher(teacher: LlavaModel, student: LlavaModel) -> None:
    """ValueError naming the difference when ``teacher`` cannot be matched to ``student`` layer by layer on the same
    inputs: decoder layers, width, vocabulary, image token."""
    t, s = teacher.config, student.config
    shape = {
        "decoder layers": (len(teacher.model.language_model.layers), len(student.model.language_model.layers)),
        "width": (t.text.hidden_size, s.text.hidden_size),
        "vocabulary": (t.text.vocab_size, s.text.vocab_size),
        "image token id": (t.image_token_id, s.image_token_id),
    }
    differ = [f"{name} {a} (the student: {b})" for name, (a, b) in shape.items() if a != b]
    if differ:
        raise ValueError(
            f"distill.teacher differs from the model it teaches: {', '.join(differ)}; distillation runs it on the "
            "same inputs and matches its decoder layers one by one: give a teacher of the student's shape (a "
            "checkpoint of the same model, trained otherwise)"
        )


def marker_id(processor: Any, text: str | None) -> int | None:
    """The token id of ``distill.turns_with`` (None: every turn) as the tokenizer writes the word after another
    word, else as given, whichever is one token; or ValueError naming the fix. Mid-sentence is what counts: a
    byte-level BPE writes " many" as one token, a SentencePiece tokenizer "▁many" for "many" (it adds the space
    itself), so either spelling of the word finds it with both."""
    if text is None:
        return None
    if processor is None:
        raise ValueError("distill.turns_with needs the run's processor (its tokenizer) to find the token")
    encode = processor.tokenizer.encode
    before = encode("a", add_special_tokens=False)
    after = encode("a " + text.lstrip(" "), add_special_tokens=False)
    mid = after[len(before) :] if after[: len(before)] == before else []
    alone = encode(text, add_special_tokens=False)
    ids = mid if len(mid) == 1 else alone
    if len(ids) != 1:
        raise ValueError(
            f"distill.turns_with {text!r} is {len(mid) or len(alone)} tokens for this tokenizer ({mid or alone}); "
            "give a word that is one token after another word (e.g. 'many'), or null to match every turn"
        )
    return int(ids[0])
