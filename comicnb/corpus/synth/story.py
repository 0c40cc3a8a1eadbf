"""The story grammar of the embedded corpus: cast, scenes, actions and the lines that run through them.

A book's story is one stream of panels cut into *beats*. A beat is one action (a ball thrown, a kite rising,
night falling, a friend approaching, rain starting, a flower growing) played by two or three cast members
over 3-5 consecutive panels in one scene; a scene lasts one to three beats. Each beat carries its dialogue:
an opener and its reply, a question whose answer needs context (the landmark of the scene, the colour of
the prop, the birds drawn in the sky, who called whom), an exclamation and an outcome; captions name a new
scene or the action. Answers depend on something drawn or said earlier, so the next line is predictable
from context but not from the words alone. Some panels stay silent.

Everything here is pure: functions take a numpy Generator and return plain dicts, which the rest of
comicnb.corpus.synth draws and writes. A panel's `characters` list the actor first and the partner second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from comicnb.corpus.lengths import length_cell

CAST: dict[str, dict] = {
    "c0": {
        "name": "Mira",
        "body": "round",
        "palette": [[222, 84, 64], [250, 218, 186], [52, 64, 160]],
        "accessory": "hat",
    },
    "c1": {
        "name": "Bolt",
        "body": "square",
        "palette": [[120, 130, 150], [200, 210, 220], [240, 200, 40]],
        "accessory": "antenna",
    },
    "c2": {
        "name": "Pip",
        "body": "triangle",
        "palette": [[60, 170, 90], [240, 200, 160], [230, 60, 120]],
        "accessory": "scarf",
    },
    "c3": {
        "name": "Juno",
        "body": "tall",
        "palette": [[150, 80, 190], [190, 140, 100], [30, 30, 30]],
        "accessory": "glasses",
    },
    "c4": {
        "name": "Tavo",
        "body": "pear",
        "palette": [[240, 150, 40], [160, 110, 80], [70, 120, 60]],
        "accessory": "backpack",
    },
    "c5": {
        "name": "Odile",
        "body": "bell",
        "palette": [[240, 120, 170], [250, 225, 200], [200, 40, 60]],
        "accessory": "bow",
    },
    "c6": {
        "name": "Rex",
        "body": "wide",
        "palette": [[110, 75, 45], [230, 190, 150], [250, 210, 0]],
        "accessory": "crown",
    },
    "c7": {
        "name": "Lumi",
        "body": "diamond",
        "palette": [[40, 170, 200], [245, 235, 220], [120, 30, 140]],
        "accessory": "cape",
    },
}

SCENES: dict[str, dict] = {
    "harbour": {
        "place": "at the harbour",
        "landmark": "the lighthouse",
        "sky": (160, 205, 235),
        "ground": (50, 100, 160),
        "horizon": 0.58,
        "outdoor": True,
    },
    "forest": {
        "place": "in the forest",
        "landmark": "the old oak",
        "sky": (195, 228, 195),
        "ground": (70, 120, 60),
        "horizon": 0.62,
        "outdoor": True,
    },
    "city": {
        "place": "in the city",
        "landmark": "the clock tower",
        "sky": (205, 205, 220),
        "ground": (115, 115, 125),
        "horizon": 0.66,
        "outdoor": True,
    },
    "desert": {
        "place": "in the desert",
        "landmark": "the tall cactus",
        "sky": (250, 215, 150),
        "ground": (225, 180, 110),
        "horizon": 0.55,
        "outdoor": True,
    },
    "kitchen": {
        "place": "in the kitchen",
        "landmark": "the stove",
        "sky": (240, 230, 200),
        "ground": (170, 120, 80),
        "horizon": 0.7,
        "outdoor": False,
    },
    "rooftop": {
        "place": "on the rooftop",
        "landmark": "the chimney",
        "sky": (40, 42, 95),
        "ground": (95, 60, 60),
        "horizon": 0.7,
        "outdoor": True,
    },
    "beach": {
        "place": "at the beach",
        "landmark": "the pier",
        "sky": (170, 220, 250),
        "ground": (240, 220, 160),
        "horizon": 0.52,
        "outdoor": True,
    },
    "garden": {
        "place": "in the garden",
        "landmark": "the fountain",
        "sky": (215, 238, 250),
        "ground": (120, 170, 80),
        "horizon": 0.62,
        "outdoor": True,
    },
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "blue": (45, 85, 215),
    "green": (35, 150, 60),
    "yellow": (245, 205, 30),
    "purple": (135, 65, 180),
    "orange": (245, 135, 25),
}
NUMBERS = ["none", "one", "two", "three", "four", "five"]

# Per action: the prop, whether it needs the open sky, whether the prop's colour shows from the first step
# (a flower's only when it blooms), the narration that introduces it, the panel description at its
# start / middle / end, and who says what: opener (role, question, reply), exclamation and outcome (role, text).
ACTIONS: dict[str, dict] = {
    "ball_throw": {
        "prop": "ball",
        "outdoor": False,
        "colour_seen": True,
        "intro": "{a} wants to play catch with {b}.",
        "start": "{a} holds up the {colour} ball",
        "middle": "the {colour} ball flies towards {b}",
        "end": "{b} catches the {colour} ball",
        "opener": ("a", "{b}, are you ready to catch?", "Throw it, {a}!"),
        "exclaim": ("a", "Here it comes!"),
        "outcome": ("b", "Got it!"),
    },
    "kite_rise": {
        "prop": "kite",
        "outdoor": True,
        "colour_seen": True,
        "intro": "{a} has brought a {colour} kite.",
        "start": "{a} holds the {colour} kite low",
        "middle": "the {colour} kite climbs into the sky",
        "end": "the {colour} kite flies high above {a}",
        "opener": ("a", "Will the wind lift it, {b}?", "Let it go, {a}!"),
        "exclaim": ("b", "Higher, higher!"),
        "outcome": ("a", "It's touching the clouds!"),
    },
    "nightfall": {
        "prop": "lamp",
        "outdoor": False,
        "colour_seen": True,
        "intro": "The sun goes down on {a} and {b}.",
        "start": "{a} and {b} watch the light fade",
        "middle": "the sky grows dark around {a} and {b}",
        "end": "{a} switches on the {colour} lamp",
        "opener": ("b", "Is it getting dark, {a}?", "Yes. I'll find the lamp."),
        "exclaim": ("b", "I can hardly see you!"),
        "outcome": ("a", "There, the {colour} lamp is on."),
    },
    "approach": {
        "prop": "parcel",
        "outdoor": False,
        "colour_seen": True,
        "intro": "{b} comes to visit {a}.",
        "start": "{b} appears far away from {a}",
        "middle": "{b} walks towards {a} with a {colour} parcel",
        "end": "{b} reaches {a} and hands over the {colour} parcel",
        "opener": ("b", "{a}! Wait for me!", "Hurry up, {b}!"),
        "exclaim": ("b", "Almost there!"),
        "outcome": ("b", "This {colour} parcel is for you."),
    },
    "rain_start": {
        "prop": "umbrella",
        "outdoor": True,
        "colour_seen": True,
        "intro": "Clouds gather over {a} and {b}.",
        "start": "a first raindrop falls near {a}",
        "middle": "the rain pours down on {a} and {b}",
        "end": "{a} opens the {colour} umbrella over {b}",
        "opener": ("a", "Was that a raindrop, {b}?", "I felt one too!"),
        "exclaim": ("b", "It's pouring!"),
        "outcome": ("a", "Quick, under my {colour} umbrella!"),
    },
    "plant_grow": {
        "prop": "flower",
        "outdoor": False,
        "colour_seen": False,
        "intro": "{a} plants a seed while {b} watches.",
        "start": "{a} plants a tiny seed",
        "middle": "a green stem grows in front of {a}",
        "end": "a {colour} flower blooms for {a} and {b}",
        "opener": ("b", "Will it ever grow, {a}?", "Give it time, {b}."),
        "exclaim": ("b", "Look, a leaf!"),
        "outcome": ("a", "A {colour} flower, just as I said."),
    },
}

# Questions whose answers need context: x asks, y answers with any reply of the question's kind. {wrong} and
# {wrong_count} are decoys, so the answer cannot be copied from the question. Eight replies a kind, so a reply heard
# after a cutaway can be told from the replies to the other kinds of question by what was asked, not by its wording.
EXCHANGES: dict[str, tuple[list[str], list[str]]] = {
    "where": (
        ["Where shall we meet tomorrow, {y}?", "Which way is home from here?"],
        [
            "By {landmark}, {x}.",
            "Just past {landmark}.",
            "Near {landmark}, I think.",
            "Over by {landmark}.",
            "At {landmark}.",
            "Meet me right beside {landmark}, {x}.",
            "Down by {landmark}.",
            "Try {landmark}, {x}.",
        ],
    ),
    "colour": (
        ["What colour is the {prop}, {y}?", "Is the {prop} {wrong}?"],
        [
            "It's {colour}.",
            "No, {x}, it's {colour}.",
            "It looks {colour} to me.",
            "Plain {colour}, {x}.",
            "All {colour}.",
            "It is {colour}, {x}, can't you see?",
            "{x}, it's {colour}.",
            "Bright {colour}, I'd say.",
        ],
    ),
    "count": (
        ["How many birds can you see?", "Are there {wrong_count} birds up there?"],
        [
            "I count {count}.",
            "No, only {count}.",
            "Just {count}, {x}.",
            "I see {count} of them.",
            "About {count}.",
            "I can see {count} birds up there, {x}.",
            "There are {count}.",
            "Only {count}, {x}.",
        ],
    ),
    "call": (
        ["Hey, {y}!", "{y}, come over here!"],
        [
            "What is it, {x}?",
            "Coming, {x}!",
            "Yes, {x}?",
            "I'm right here, {x}!",
            "Wait for me!",
            "Just a moment, I'm coming, {x}!",
            "Yes? What now?",
            "Over here, {x}!",
        ],
    ),
}
# A beat of at least three steps is interrupted this often by a cutaway ("Meanwhile, ..."): one or two panels of other
# cast members elsewhere, after which the beat resumes where it stopped. A question asked just before the cutaway is
# answered just after it, so the story state (who, where, which prop, what was asked) lies two or more panels back.
CUTAWAY_SHARE = 0.5
WHEN = ["Meanwhile", "Later", "That morning", "That evening", "Soon after", "Next day"]
TITLE_WORDS = (
    ["Lost", "Silver", "Hidden", "Windy", "Midnight", "Giant"],
    ["Lighthouse", "Kite", "Parcel", "Garden", "Storm", "Map"],
)
ADVERTS = [
    ("ZOOM sneakers", "Run faster than the wind!"),
    ("SPARKLE soap", "Clean as a whistle."),
    ("CRUNCH cereal", "The breakfast of heroes."),
    ("GLOW torch", "Never fear the dark again."),
    ("FIZZ soda", "Bubbles in every sip!"),
]


def pick(rng: np.random.Generator, items: Sequence):
    """One item of a sequence, drawn from rng (plain Python types, unlike rng.choice)."""
    return items[int(rng.integers(len(items)))]


def speech(speaker: str, text: str) -> dict:
    """A balloon line."""
    return {"speaker": speaker, "text": text, "kind": "speech"}


def caption(text: str) -> dict:
    """A narration box line."""
    return {"speaker": None, "text": text, "kind": "caption"}


def plan_story(
    rng: np.random.Generator, cast: Sequence[str], n_panels: int, first_beat: int = 0, first_run: int = 0
) -> list[dict]:
    """A book's narrative panels in reading order: beats of actions in scenes that last 1-3 beats.

    Each panel carries ``beat`` and ``scene_run``, the numbers of its beat and of its stretch of one scene, counted
    from first_beat and first_run (a second story in the same book starts past the first one's numbers).
    """
    panels: list[dict] = []
    scene, beats_left, action = None, 0, None
    beat, run = first_beat - 1, first_run - 1
    while len(panels) < n_panels:
        new_scene = beats_left == 0
        if new_scene:
            scene, beats_left = pick(rng, [s for s in SCENES if s != scene]), int(rng.integers(1, 4))
            run += 1
        beats_left -= 1
        beat += 1
        steps = min(int(rng.integers(3, 6)), n_panels - len(panels))
        # Numbered here, not in plan_beat: the numbers draw nothing from rng, so every other draw stays the same.
        played = [
            {**panel, "beat": beat, "scene_run": run}
            for panel in plan_beat(rng, cast, scene, steps, new_scene, after=action)
        ]
        action = played[-1]["action"]
        if steps >= 3 and len(panels) + steps < n_panels and rng.random() < CUTAWAY_SHARE:
            cut = int(rng.integers(1, 3))
            # The cutaway's own numbers are negative, so they never meet a story beat's or scene run's.
            played = cut_away(rng, cast, played, min(cut, n_panels - len(panels) - steps), -1 - beat, -1 - run)
        panels += played
    return [_planned(panel) for panel in panels[:n_panels]]


def _planned(panel: dict) -> dict:
    """A story panel as the plan keeps it: without the beat's words and the lines' group numbers."""
    lines = [{k: v for k, v in line.items() if k != "group"} for line in panel["lines"]]
    return {**{k: v for k, v in panel.items() if k != "ctx"}, "lines": lines}


def cut_away(
    rng: np.random.Generator, cast: Sequence[str], played: list[dict], cut: int, beat: int, run: int
) -> list[dict]:
    """A beat's panels with a cutaway of ``cut`` panels before one of its steps after the second: other cast members
    in another scene, opened by a "Meanwhile" caption. The panel before the cutaway ends with a question and the
    panel it resumes with opens with the answer (their other lines are dropped whole, pairs never split); the
    resumed panel records ``resumes`` (the kind asked, the reply, and the replies of the other kinds with the beat's
    words, for the long-range probes). Played as is where fewer than two cast members are free or no kind fits."""
    who, scene = played[0]["characters"], played[0]["scene"]
    free = [c for c in cast if c not in who]
    ctx = played[0]["ctx"]
    kinds = exchange_kinds(ctx)
    if len(free) < 2 or not kinds:
        return played
    at = int(rng.integers(2, len(played)))  # the step that resumes: at least two steps before the cutaway
    elsewhere = pick(rng, [s for s in SCENES if s != scene])
    away = [
        {**panel, "beat": beat, "scene_run": run, "cutaway": True}
        for panel in plan_beat(rng, free, elsewhere, cut, new_scene=True)
    ]
    away[0]["lines"] = [caption(f"Meanwhile, {SCENES[elsewhere]['place']}."), *away[0]["lines"][1:]]
    kind = pick(rng, kinds)
    x, y = (str(c) for c in rng.permutation(who)[:2])
    words = {**ctx["words"], "x": CAST[x]["name"], "y": CAST[y]["name"]}
    questions, replies = EXCHANGES[kind]
    question = pick(rng, questions).format(**words)
    # The kind is drawn first, then a reply of it that every other kind can match in length where one can: the probe
    # offers one reply of each kind, all of the answer's length (its empty balloon shows how long it was).
    matched = [r for r in replies if _matched(r.format(**words), kind, words)]
    reply = pick(rng, matched or replies).format(**words)
    touched = {g for panel in played[at - 1 : at + 1] for line in panel["lines"] for g in [line.get("group")]}
    for panel in played:
        panel["lines"] = [line for line in panel["lines"] if line.get("group") is None or line["group"] not in touched]
    played[at - 1]["lines"].append(speech(x, question))
    played[at]["lines"].insert(0, speech(y, reply))
    played[at]["resumes"] = {
        "asked": kind,
        "question": question,
        "reply": reply,
        "replies": {k: [r.format(**words) for r in EXCHANGES[k][1]] for k in EXCHANGES if k != kind},
        "all_kinds": len(kinds) == len(EXCHANGES),
    }
    return played[:at] + away + played[at:]


def _matched(reply: str, kind: str, words: dict) -> bool:
    """Whether every other kind of question has a reply in the words given in ``reply``'s length cell."""
    cell = length_cell(reply)
    return all(any(length_cell(r.format(**words)) == cell for r in EXCHANGES[k][1]) for k in EXCHANGES if k != kind)


def exchange_kinds(ctx: dict) -> list[str]:
    """The kinds of question that can be asked in a beat: the birds only where some are drawn, the prop's colour only
    where it shows from the first step."""
    return [
        k
        for k in EXCHANGES
        if (k != "count" or ctx["birds"] > 0) and (k != "colour" or ACTIONS[ctx["action"]]["colour_seen"])
    ]


def plan_beat(
    rng: np.random.Generator, cast: Sequence[str], scene: str, steps: int, new_scene: bool, after: str | None = None
) -> list[dict]:
    """The panels of one action in one scene (never the action just played, `after`), with their dialogue."""
    ctx = _context(rng, cast, scene, after)
    slots = _beat_lines(rng, ctx, steps, new_scene)
    return [
        {
            "ctx": ctx,  # the words of the beat, for a cutaway; _planned drops it and the lines' groups
            "characters": list(ctx["who"]),
            "scene": scene,
            "action": ctx["action"],
            "action_step": k,
            "action_steps": steps,
            "caption": _description(ctx, k, steps),
            "lines": slots[k],
            "props": {"colour": ctx["words"]["colour"], "birds": ctx["birds"]},
        }
        for k in range(steps)
    ]


def _context(rng: np.random.Generator, cast: Sequence[str], scene: str, after: str | None) -> dict:
    """Who plays which action with what prop, and the words the templates may use."""
    action = pick(
        rng, [a for a, spec in ACTIONS.items() if a != after and (SCENES[scene]["outdoor"] or not spec["outdoor"])]
    )
    size = 3 if len(cast) > 2 and rng.random() < 0.25 else 2
    who = [str(c) for c in rng.permutation(list(cast))[:size]]
    colour, wrong = (str(c) for c in rng.permutation(list(COLOURS))[:2])
    birds = int(rng.integers(0, 6)) if SCENES[scene]["outdoor"] else 0
    words = {
        "a": CAST[who[0]]["name"],
        "b": CAST[who[1]]["name"],
        "colour": colour,
        "wrong": wrong,
        "prop": ACTIONS[action]["prop"],
        "place": SCENES[scene]["place"],
        "landmark": SCENES[scene]["landmark"],
        "count": NUMBERS[birds],
        "wrong_count": NUMBERS[pick(rng, [n for n in range(2, 6) if n != birds])],
    }
    return {"action": action, "scene": scene, "who": who, "birds": birds, "words": words}


def _description(ctx: dict, step: int, steps: int) -> str:
    """One-line caption of a panel: the phase of the action and the place."""
    phase = "end" if step == steps - 1 else "start" if step == 0 else "middle"
    text = ACTIONS[ctx["action"]][phase].format(**ctx["words"])
    return f"{text[0].upper()}{text[1:]} {ctx['words']['place']}."


def _beat_lines(rng: np.random.Generator, ctx: dict, steps: int, new_scene: bool) -> list[list[dict]]:
    """Lines of each panel of a beat; groups are laid out in time order, so answers follow questions."""
    slots: list[list[dict]] = [[] for _ in range(steps)]
    if new_scene:
        slots[0].append(caption(f"{pick(rng, WHEN)}, {ctx['words']['place']}."))
    elif rng.random() < 0.35:
        slots[0].append(caption(ACTIONS[ctx["action"]]["intro"].format(**ctx["words"])))
    cursor = 0
    for g, (at, group) in enumerate(_groups(rng, ctx)):  # each line knows its group, so a cutaway drops pairs whole
        cursor = _place(rng, slots, cursor, at, [{**line, "group": g} for line in group])
    return slots


def _groups(rng: np.random.Generator, ctx: dict) -> list[tuple[str, list[dict]]]:
    """The beat's utterances in time order: (where it goes: start / any / end, its lines)."""
    spec, role = ACTIONS[ctx["action"]], {"a": ctx["who"][0], "b": ctx["who"][1]}
    other = {"a": "b", "b": "a"}
    middle = []
    if rng.random() < 0.5:
        middle.append([speech(role[spec["exclaim"][0]], spec["exclaim"][1].format(**ctx["words"]))])
    if rng.random() < 0.65:
        middle.append(_exchange(rng, ctx))
    groups = [("any", middle[i]) for i in rng.permutation(len(middle))]
    if rng.random() < 0.75:
        asker, question, reply = spec["opener"]
        groups.insert(
            0,
            (
                "start",
                [
                    speech(role[asker], question.format(**ctx["words"])),
                    speech(role[other[asker]], reply.format(**ctx["words"])),
                ],
            ),
        )
    if rng.random() < 0.7:
        groups.append(("end", [speech(role[spec["outcome"][0]], spec["outcome"][1].format(**ctx["words"]))]))
    return groups


def _exchange(rng: np.random.Generator, ctx: dict) -> list[dict]:
    """A question from one participant and the answer of another; the answer needs context."""
    questions, replies = EXCHANGES[pick(rng, exchange_kinds(ctx))]
    question, answer = pick(rng, questions), pick(rng, replies)
    x, y = (str(c) for c in rng.permutation(ctx["who"])[:2])
    words = {**ctx["words"], "x": CAST[x]["name"], "y": CAST[y]["name"]}
    return [speech(x, question.format(**words)), speech(y, answer.format(**words))]


def _place(rng: np.random.Generator, slots: list[list[dict]], cursor: int, at: str, group: list[dict]) -> int:
    """Put a group at or after the cursor (a pair may straddle two panels); return the new cursor."""
    # A group that no longer fits (at most two balloons a panel) is dropped whole, never half a pair.
    last = len(slots) - 1
    start = {"start": 0, "end": last}.get(at, cursor + int(rng.random() < 0.5))
    split = len(group) == 2 and start < last and rng.random() < 0.6
    targets = [start, start + 1] if split else [start] * len(group)
    load = {t: sum(line["kind"] == "speech" for line in slots[t]) + targets.count(t) for t in targets if t <= last}
    if start < cursor or targets[-1] > last or max(load.values()) > 2:
        return cursor
    for target, line in zip(targets, group):
        slots[target].append(line)
    return targets[-1]


def book_title(rng: np.random.Generator, cast: Sequence[str]) -> str:
    """A title naming the book's lead."""
    return f"{CAST[cast[0]]['name']} and the {pick(rng, TITLE_WORDS[0])} {pick(rng, TITLE_WORDS[1])}"


def cover_panel(rng: np.random.Generator, cast: Sequence[str], title: str) -> dict:
    """The single panel of a cover: the cast in a scene under the title."""
    names = [CAST[c]["name"] for c in cast]
    return {
        "characters": list(cast),
        "scene": pick(rng, list(SCENES)),
        "action": None,
        "action_step": None,
        "action_steps": None,
        "beat": None,
        "scene_run": None,
        "caption": f"Cover of {title}, showing {', '.join(names[:-1])} and {names[-1]}.",
        "lines": [caption(title)],
        "props": {"colour": pick(rng, list(COLOURS)), "birds": 0},
    }


def advert_panel(rng: np.random.Generator) -> dict:
    """The single panel of an advertisement page: product, slogan, price."""
    product, slogan = pick(rng, ADVERTS)
    lines = [caption(product), caption(slogan), caption(f"Only {5 * int(rng.integers(1, 10))} cents!")]
    return {
        "characters": [],
        "scene": None,
        "action": None,
        "action_step": None,
        "action_steps": None,
        "beat": None,
        "scene_run": None,
        "caption": f"An advertisement for {product}.",
        "lines": lines,
        "props": {"colour": pick(rng, list(COLOURS)), "birds": 0},
    }


def prose_panel(story: Sequence[dict]) -> dict:
    """The single panel of a text page: the story so far, as prose."""
    chosen = story[:: max(1, len(story) // 4)][:4]
    lines = [caption("The story so far.")] + [caption(p["caption"]) for p in chosen]
    return {
        "characters": [],
        "scene": None,
        "action": None,
        "action_step": None,
        "action_steps": None,
        "beat": None,
        "scene_run": None,
        "caption": "A page of prose telling the story so far.",
        "lines": lines,
        "props": {"colour": "yellow", "birds": 0},
    }
