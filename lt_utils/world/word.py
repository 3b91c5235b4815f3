"""The word-problem family: short stories built from five frames.

The story frames, the operand ranges, the template matching used to parse
stories back, and the exact count of the family's instance space live here.

Derivation:

* **word** one step per operation, in story order: buying ``k`` bags of ``m``
  is ``k*m=p`` then ``t+p=t'``; selling/giving is ``t-n=t'``; sharing equally
  is ``t/k=q``.  Five story templates (two people, bakery, farm, library),
  operands <= 20, results < 1000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from lt_utils.world.arithmetic import add_step, sub_step
from lt_utils.world.units import _Derivation, spells
from lt_utils.world.family import Family, _canon_int, _pick, _ri

_NAMES = (
    ("Ann", "she"), ("Ben", "he"), ("Carla", "she"), ("Dan", "he"), ("Emma", "she"),
    ("Finn", "he"), ("Gwen", "she"), ("Hugo", "he"), ("Iris", "she"), ("Jack", "he"),
    ("Kate", "she"), ("Leo", "he"), ("Mia", "she"), ("Omar", "he"), ("Nora", "she"),
    ("Pete", "he"), ("Rosa", "she"), ("Sam", "he"), ("Tara", "she"), ("Vic", "he"),
)
_PRONOUN = dict(_NAMES)
_NAME_LIST = tuple(n for n, _ in _NAMES)


@dataclass(frozen=True)
class _Frame:
    name: str
    subjects: tuple[str, ...]  # people (with their pronoun) or places ("it")
    objs: tuple[str, ...]
    extras: tuple[str, ...]  # values of {X} in the "sub" sentence; () when unused
    start: str
    add: str
    sub: str
    group: str
    share: str
    ask: str
    ask_share: str


_FRAMES = (
    _Frame(
        "shop", _NAME_LIST,
        ("apples", "oranges", "pencils", "stickers", "marbles", "cards"),
        ("other-name",),
        start="{S} has {n} {o}.",
        add="{P} buys {n} more {o}.",
        sub="{P} gives {n} {o} to {X}.",
        group="{P} buys {k} bags of {m} {o} each.",
        share="{P} packs them equally into {k} boxes.",
        ask="How many {o} does {p} have now?",
        ask_share="How many {o} are in each box?",
    ),
    _Frame(
        "money", _NAME_LIST,
        ("dollars", "coins", "tokens", "stamps"),
        ("book", "toy", "lunch", "ticket", "kite"),
        start="{S} saves {n} {o}.",
        add="{P} earns {n} more {o}.",
        sub="{P} spends {n} {o} on a {X}.",
        group="{P} works {k} days and earns {m} {o} each day.",
        share="{P} splits them equally among {k} friends.",
        ask="How many {o} does {p} have now?",
        ask_share="How many {o} does each friend get?",
    ),
    _Frame(
        "bakery", ("bakery", "cafe"),
        ("muffins", "cookies", "rolls", "buns", "bagels", "tarts"),
        (),
        start="A {S} makes {n} {o} in the morning.",
        add="It makes {n} more {o} at noon.",
        sub="It sells {n} {o}.",
        group="It bakes {k} trays of {m} {o} each.",
        share="It packs them equally into {k} bags.",
        ask="How many {o} does the {S} have now?",
        ask_share="How many {o} are in each bag?",
    ),
    _Frame(
        "farm", ("farm", "ranch"),
        ("sheep", "goats", "hens", "ducks", "cows", "pigs"),
        (),
        start="A {S} has {n} {o}.",
        add="The farmer buys {n} more {o}.",
        sub="The farmer sells {n} {o} at the market.",
        group="The farmer buys {k} pens of {m} {o} each.",
        share="The farmer splits them equally into {k} fields.",
        ask="How many {o} are on the {S} now?",
        ask_share="How many {o} are in each field?",
    ),
    _Frame(
        "library", ("library", "school"),
        ("books", "magazines", "comics", "maps", "atlases"),
        (),
        start="The {S} owns {n} {o}.",
        add="It receives {n} new {o}.",
        sub="Readers borrow {n} {o}.",
        group="It receives {k} boxes of {m} {o} each.",
        share="It places them equally on {k} shelves.",
        ask="How many {o} does the {S} have now?",
        ask_share="How many {o} are on each shelf?",
    ),
)
_FRAME_BY_NAME = {f.name: f for f in _FRAMES}

# operand ranges of the word family
_W_START = (2, 20)
_W_ADD = (1, 20)
_W_SUB_MAX = 20
_W_GROUP_K = (2, 9)
_W_GROUP_M = (2, 12)
_W_SHARE_K = (2, 9)


def _share_divisors(total: int) -> list[int]:
    return [k for k in range(_W_SHARE_K[0], _W_SHARE_K[1] + 1) if total >= k and total % k == 0]


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    out = []
    for part in re.split(r"(\{[A-Za-z]\})", template):
        if part in ("{n}", "{k}", "{m}"):
            out.append(r"(\d+)")
        elif len(part) == 3 and part.startswith("{"):
            out.append(r"([A-Za-z]+)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def _template_slots(template: str) -> list[str]:
    return re.findall(r"\{([A-Za-z])\}", template)


def _match_template(template: str, sentence: str) -> dict[str, str] | None:
    m = _template_regex(template).fullmatch(sentence)
    if not m:
        return None
    return dict(zip(_template_slots(template), m.groups()))


class _Word(Family):
    """Instance = (frame, subject, obj, start, events).

    events is a tuple of ("add", n) | ("sub", n, extra) | ("group", k, m) |
    ("share", k); "group" costs two operations, "share" may only come last.
    """

    name = "word"
    default_difficulty = 2
    difficulties = tuple(range(1, 7))
    knob = "number of arithmetic operations"

    # -- sampling ----------------------------------------------------------- #
    def sample(self, rng, difficulty):
        frame = _pick(rng, _FRAMES)
        subject = _pick(rng, frame.subjects)
        obj = _pick(rng, frame.objs)
        start = _ri(rng, *_W_START)
        total, left, events = start, difficulty, []
        while left > 0:
            kinds = ["add"]
            if total >= 1:
                kinds.append("sub")
            if left >= 2:
                kinds.append("group")
            if left == 1 and _share_divisors(total):
                kinds.append("share")
            kind = _pick(rng, kinds)
            if kind == "add":
                n = _ri(rng, *_W_ADD)
                events.append(("add", n))
                total, left = total + n, left - 1
            elif kind == "sub":
                n = _ri(rng, 1, min(_W_SUB_MAX, total))
                events.append(("sub", n, self._extra(rng, frame, subject)))
                total, left = total - n, left - 1
            elif kind == "group":
                k, m = _ri(rng, *_W_GROUP_K), _ri(rng, *_W_GROUP_M)
                events.append(("group", k, m))
                total, left = total + k * m, left - 2
            else:
                k = _pick(rng, _share_divisors(total))
                events.append(("share", k))
                total, left = total // k, left - 1
        return (frame.name, subject, obj, start, tuple(events))

    @staticmethod
    def _extra_choices(frame: _Frame, subject: str) -> tuple[str, ...]:
        if frame.extras == ("other-name",):
            return tuple(n for n in _NAME_LIST if n != subject)
        return frame.extras or ("",)

    def _extra(self, rng, frame, subject):
        return _pick(rng, self._extra_choices(frame, subject))

    # -- text --------------------------------------------------------------- #
    def render(self, inst):
        fname, subject, obj, start, events = inst
        fr = _FRAME_BY_NAME[fname]
        pron = _PRONOUN.get(subject, "it")
        base = {"S": subject, "P": pron.capitalize(), "p": pron, "o": obj}
        sents = [fr.start.format(n=start, **base)]
        for ev in events:
            if ev[0] == "add":
                sents.append(fr.add.format(n=ev[1], **base))
            elif ev[0] == "sub":
                sents.append(fr.sub.format(n=ev[1], X=ev[2], **base))
            elif ev[0] == "group":
                sents.append(fr.group.format(k=ev[1], m=ev[2], **base))
            else:
                sents.append(fr.share.format(k=ev[1], **base))
        final_share = bool(events) and events[-1][0] == "share"
        sents.append((fr.ask_share if final_share else fr.ask).format(**base))
        return " ".join(sents)

    def parse(self, question):
        sents = re.split(r"(?<=[.?]) ", question)
        if len(sents) < 3 or len(sents) > 12:
            return None
        for fr in _FRAMES:
            head = _match_template(fr.start, sents[0])
            if head is None:
                continue
            start = _canon_int(head["n"])
            if start is None:
                continue
            events = []
            for sent in sents[1:-1]:
                ev = self._parse_event(fr, sent)
                if ev is None:
                    break
                events.append(ev)
            else:
                inst = (fr.name, head["S"], head["o"], start, tuple(events))
                if self._valid(inst) and self.render(inst) == question:
                    return inst
        return None

    @staticmethod
    def _parse_event(fr: _Frame, sent: str) -> tuple | None:
        for kind in ("add", "sub", "group", "share"):
            slots = _match_template(getattr(fr, kind), sent)
            if slots is None:
                continue
            nums = {s: _canon_int(slots[s]) for s in ("n", "k", "m") if s in slots}
            if any(v is None for v in nums.values()):
                return None
            if kind == "add":
                return ("add", nums["n"])
            if kind == "sub":
                return ("sub", nums["n"], slots.get("X", ""))
            if kind == "group":
                return ("group", nums["k"], nums["m"])
            return ("share", nums["k"])
        return None

    def _valid(self, inst) -> bool:
        fname, subject, obj, start, events = inst
        fr = _FRAME_BY_NAME.get(fname)
        if fr is None or subject not in fr.subjects or obj not in fr.objs:
            return False
        if not _W_START[0] <= start <= _W_START[1]:
            return False
        total = start
        for i, ev in enumerate(events):
            if ev[0] == "add":
                if not _W_ADD[0] <= ev[1] <= _W_ADD[1]:
                    return False
                total += ev[1]
            elif ev[0] == "sub":
                if not 1 <= ev[1] <= min(_W_SUB_MAX, total):
                    return False
                if ev[2] not in self._extra_choices(fr, subject):
                    return False
                total -= ev[1]
            elif ev[0] == "group":
                if not (_W_GROUP_K[0] <= ev[1] <= _W_GROUP_K[1] and _W_GROUP_M[0] <= ev[2] <= _W_GROUP_M[1]):
                    return False
                total += ev[1] * ev[2]
            else:
                if i != len(events) - 1 or ev[1] not in _share_divisors(total):
                    return False
                total //= ev[1]
        return self.difficulty_of(inst) in self.difficulties

    def difficulty_of(self, inst):
        return sum(2 if ev[0] == "group" else 1 for ev in inst[4])

    def derive(self, inst, style="compact"):
        total = inst[3]
        d, spelled = _Derivation(), spells(style, self.name)
        for ev in inst[4]:
            if ev[0] == "add":
                total = add_step(d, total, ev[1], spelled)
            elif ev[0] == "sub":
                total = sub_step(d, total, ev[1], spelled)
            elif ev[0] == "group":
                p = d.step(f"{ev[1]}*{ev[2]}", ev[1] * ev[2])
                total = add_step(d, total, p, spelled)
            else:
                total = d.step(f"{total}/{ev[1]}", total // ev[1])
        return d.solution(total)

    def space_size(self, difficulty):
        return sum(_word_frame_count(fr.name, difficulty) for fr in _FRAMES)

    def enumerate(self, difficulty):  # pragma: no cover - far too many
        raise NotImplementedError("the word family is never enumerated")


@lru_cache(maxsize=None)
def _word_frame_count(frame_name: str, difficulty: int) -> int:
    fr = _FRAME_BY_NAME[frame_name]

    @lru_cache(maxsize=None)
    def with_extras(left: int, total: int, n_extra: int) -> int:
        # event sequences with `left` operations to go from running total `total`;
        # each "sub" event counts once per extra-slot choice
        if left == 0:
            return 1
        n = sum(with_extras(left - 1, total + a, n_extra) for a in range(_W_ADD[0], _W_ADD[1] + 1))
        n += n_extra * sum(with_extras(left - 1, total - s, n_extra) for s in range(1, min(_W_SUB_MAX, total) + 1))
        if left >= 2:
            n += sum(
                with_extras(left - 2, total + k * m, n_extra)
                for k in range(_W_GROUP_K[0], _W_GROUP_K[1] + 1)
                for m in range(_W_GROUP_M[0], _W_GROUP_M[1] + 1)
            )
        if left == 1:
            n += len(_share_divisors(total))
        return n

    total = 0
    for subject in fr.subjects:
        n_extra = len(_Word._extra_choices(fr, subject))
        per_obj = sum(with_extras(difficulty, s, n_extra) for s in range(_W_START[0], _W_START[1] + 1))
        total += per_obj * len(fr.objs)
    return total
