"""What the simulated Ollama writes: plain English sentences made from the request alone, so that a
demo's story reads like one. The idea in the prompt gives the hero, what happens and the thing it
happens with; the genre gives the mood, the light, the complications and the ending; later steps
find what earlier ones wrote in their prompts (the story's text, its segments, its cast) and build
on it, so the names, the segments and the shots agree. Every choice comes from the
`random.Random` it is given: the same request gets the same answer.

`Teller.plan` reads which answer a schema asks for from its field names (title and text;
segments; characters; shots; scenes; positive and negative; narration lines; music cues) and
returns what its fields should say; `Teller.text` writes any other field by its name. The schema
walker in nodes/sim/ollama.py fits both to the schema's limits.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

# A cast to choose from, each with the pronoun the sentences use.
NAMES = (
    ("Mara", "she"),
    ("Tomas", "he"),
    ("Ines", "she"),
    ("Elias", "he"),
    ("Nadia", "she"),
    ("Jonah", "he"),
    ("Greta", "she"),
    ("Felix", "he"),
    ("Lena", "she"),
    ("Oskar", "he"),
    ("Rosa", "she"),
    ("Milo", "he"),
    ("Alma", "she"),
    ("Theo", "he"),
    ("Vera", "she"),
    ("Hugo", "he"),
)
PRONOUNS = {"she": ("she", "her", "her", "herself"), "he": ("he", "him", "his", "himself")}
KNOWN = dict(NAMES)
# Styles that are drawn, not filmed: their prompts keep photographic looks out instead of cartoons.
DRAWN = ("anim", "cartoon", "watercolour", "watercolor", "paint", "illustrat")

ARTICLES = {"a", "an", "the"}
DETERMINERS = ARTICLES | {"her", "his", "their", "its", "my", "our", "some", "one", "every"}
# Words after which the verb of an idea's first sentence is likely to stand ("finds a", "sings under").
FOLLOWERS = DETERMINERS | {
    "to", "into", "onto", "in", "on", "at", "across", "through", "under", "over", "from", "with", "for",
    "out", "up", "down", "away", "back", "home", "this", "that", "all", "off", "behind", "inside",
    "beneath", "along", "around", "toward", "towards", "past", "after", "by", "no", "nothing",
    "something", "someone", "everything", "what", "where", "how", "why", "two", "three", "himself",
    "herself", "themselves", "itself", "them", "him",
}  # fmt: skip
AUX = {"is", "was", "are", "were", "has", "have", "had", "can", "will", "must", "cannot"}
RELATIVE = {"who", "that", "which", "where", "whose", "whom", "when"}
NP_STOPS = RELATIVE | {"and", "but", "to", "while", "as", "because", "until", "so"}
PREPOSITIONS = {"in", "of", "on", "at", "under", "from", "with", "by", "onto", "into", "for", "inside", "beneath"}
SMALL = {"a", "an", "the", "in", "of", "on", "at", "to", "and", "for", "with", "by", "from", "into", "onto"}
SHE = {
    "she",
    "her",
    "herself",
    "girl",
    "woman",
    "mother",
    "sister",
    "daughter",
    "queen",
    "princess",
    "grandmother",
    "wife",
}
HE = {
    "he",
    "his",
    "him",
    "himself",
    "boy",
    "man",
    "father",
    "brother",
    "son",
    "king",
    "prince",
    "grandfather",
    "husband",
}
# Places one is at (the others one is in).
AT_PLACES = {
    "lighthouse",
    "harbour",
    "harbor",
    "sea",
    "station",
    "beach",
    "shore",
    "lake",
    "bridge",
    "market",
    "airport",
}
NUMBERS = {"two", "three", "four", "five", "several", "many", "some"}
PLACES = (
    "lighthouse", "harbour", "harbor", "sea", "ocean", "city", "town", "village", "forest", "woods",
    "river", "desert", "station", "kitchen", "house", "island", "ship", "school", "library",
    "mountain", "mountains", "street", "garden", "beach", "shore", "lake", "castle", "tower", "farm",
    "market", "hospital", "office", "moon", "planet", "train", "bridge", "museum", "cafe", "attic",
    "cellar", "church", "hotel", "valley", "jungle", "airport", "laboratory", "bakery", "circus",
)  # fmt: skip


@dataclass(frozen=True)
class Genre:
    name: str
    light: str
    places: tuple[str, ...]  # where the story is when the idea names no place
    roles: tuple[str, ...]  # the hero's, when the idea names none
    allies: tuple[str, ...]
    hooks: tuple[str, ...]
    stakes: tuple[str, str, str]
    endings: tuple[str, ...]
    moods: tuple[str, str, str]  # music at the start, in the middle, at the end
    music: tuple[str, str, str]
    openers: tuple[str, ...]  # the narrator's first words
    closer: str
    traits: tuple[str, ...]
    last_title: str


GENRES = {
    "mystery": Genre(
        "mystery",
        "cold blue moonlight",
        ("the harbour town", "the old quarter"),
        ("a night clerk", "a young archivist"),
        ("the harbour master", "a retired detective", "the town librarian"),
        (
            "Nothing about {thing} makes sense, and {s} cannot leave it alone.",
            "{s} is sure that {thing} was meant for {o} and for nobody else.",
        ),
        (
            "someone else is looking for {thing} too",
            "the only witness has vanished",
            "every clue points to a night that everyone wants to forget",
        ),
        (
            "The answer was {at} all along, hidden in plain sight.",
            "The last clue falls into place, and {hero} finally knows who sent {thing}.",
        ),
        ("Hushed and curious", "Uneasy and building", "Quiet and resolved"),
        ("a solo cello and soft piano", "pizzicato strings over a low pulse", "warm strings and a single clarinet"),
        (
            "Some questions wait years for the right person to find them.",
            "Look closely, because nothing here is an accident.",
        ),
        "Some mysteries end, and the best ones only change shape.",
        ("patient", "observant", "stubborn", "quietly funny", "secretive", "sharp-eyed"),
        "The Answer",
    ),
    "horror": Genre(
        "horror",
        "flickering candlelight",
        ("the empty house at the end of the lane", "the old asylum"),
        ("a night nurse", "a caretaker"),
        ("the caretaker next door", "a local priest", "an old schoolfriend"),
        (
            "From the moment {s} touches {thing}, the air grows colder.",
            "{s} tells {r} it is nothing, but the whispering has already begun.",
        ),
        ("something in the dark has noticed them", "the whispers now know their names", "the doors will not stay shut"),
        (
            "{hero} escapes at dawn, but {thing} is waiting again the next night.",
            "The house falls silent, and only {hero} knows what it cost.",
        ),
        ("Cold and still", "Creeping dread", "Hollow calm"),
        ("a detuned music box", "low drones and scraping strings", "a single high violin over silence"),
        ("Some things should stay where they are found.", "Listen closely, because the dark is listening too."),
        "Sleep well, if you can.",
        ("brave", "sceptical", "nervous", "stubborn", "kind", "secretive"),
        "The Next Night",
    ),
    "comedy": Genre(
        "comedy",
        "bright afternoon sun",
        ("a small seaside town", "a very ordinary office"),
        ("an overconfident baker", "a part-time magician"),
        ("a deadpan neighbour", "the world's worst assistant", "an old rival"),
        (
            "{s} decides at once that {thing} is the best thing that has ever happened to {o}.",
            "{s} has a plan, and it is a terrible one.",
        ),
        (
            "every attempt to fix things makes them worse",
            "half the town gets involved",
            "the plan unravels in the most public way possible",
        ),
        (
            "It all ends in a glorious mess, and {hero} would not change a thing.",
            "Against all odds the plan works, though nobody can say how.",
        ),
        ("Light and playful", "Bouncy chaos", "Warm and cheeky"),
        ("plucky pizzicato and a clarinet", "a brisk brass band with woodblocks", "a jaunty piano and whistling"),
        ("Nobody plans a day like this.", "It seemed like a good idea at the time."),
        "And that, more or less, is how it happened.",
        ("cheerful", "impulsive", "deadpan", "fussy", "optimistic", "clumsy"),
        "All's Well, Mostly",
    ),
    "romance": Genre(
        "romance",
        "golden evening light",
        ("a rainy city", "a small harbour cafe"),
        ("a bookshop owner", "a travelling musician"),
        ("a stranger with a kind smile", "an old flame", "the new neighbour"),
        (
            "{s} cannot stop thinking about {thing}, or about who it might belong to.",
            "To {hero}, {thing} feels like the start of something.",
        ),
        (
            "neither of them will say what they feel",
            "an old promise stands between them",
            "time is running out before one of them leaves",
        ),
        (
            "{hero} and {ally} meet again where it began, and this time neither of them leaves.",
            "{hero} finally says what {s} feels, and {ally} has been waiting to hear it.",
        ),
        ("Tender and hopeful", "Aching and restless", "Warm and full"),
        ("a solo piano and soft strings", "a slow acoustic guitar", "full strings with a gentle horn"),
        ("Some meetings feel as if they were always going to happen.", "Love rarely arrives on time."),
        "Some endings are really beginnings.",
        ("warm", "guarded", "hopeful", "shy", "generous", "restless"),
        "Together",
    ),
    "science fiction": Genre(
        "science fiction",
        "the cold glow of the monitors",
        ("a research station at the edge of the solar system", "a city under a glass dome"),
        ("a station engineer", "a signal analyst"),
        ("the station's old maintenance robot", "a colleague from the night shift", "a pilot nobody trusts"),
        (
            "The readings around {thing} make no sense, and {s} checks them three times.",
            "{s} realises that {thing} should not exist yet.",
        ),
        (
            "the signal is getting stronger",
            "the station's systems begin to fail one by one",
            "someone has erased the logs",
        ),
        (
            "{hero} sends one last message home, and for the first time it is answered.",
            "The signal falls silent, and {hero} knows the future has changed.",
        ),
        ("Vast and curious", "Pulsing tension", "Bright and open"),
        (
            "soft synth pads and a glassy arpeggio",
            "a driving synth pulse with low brass",
            "shimmering synths and a choir",
        ),
        ("Out here, silence is never quite empty.", "The future has a way of arriving early."),
        "Somewhere, a signal is still travelling.",
        ("curious", "methodical", "reckless", "calm", "brilliant", "lonely"),
        "The Signal Home",
    ),
    "fantasy": Genre(
        "fantasy",
        "soft lantern light",
        ("a village at the edge of an enchanted forest", "a tower above the clouds"),
        ("an apprentice mapmaker", "a shepherd"),
        ("a talking fox", "an exiled witch", "a wandering knight"),
        (
            "An old magic hums inside {thing}, and it seems to know {hero}'s name.",
            "{s} feels the world shift the moment {s} touches {thing}.",
        ),
        ("an old curse wakes", "the forest closes the paths behind them", "every spell has a price"),
        (
            "The spell breaks at last, and {place} is green again.",
            "{hero} returns home changed, with {thing} safe in {p} hands.",
        ),
        ("Wondrous and gentle", "Dark and driving", "Triumphant and warm"),
        ("a harp and a wooden flute", "war drums and low horns", "a full orchestra with a soaring choir"),
        (
            "Long ago, or perhaps not so long ago, magic still listened.",
            "Every legend starts with someone who said yes.",
        ),
        "And the story is still told, on long winter nights.",
        ("brave", "dreamy", "loyal", "proud", "curious", "wise"),
        "Home Again",
    ),
    "adventure": Genre(
        "adventure",
        "hard midday sun",
        ("a busy port city", "the high mountains"),
        ("a courier", "a ferry pilot"),
        ("a smuggler with a conscience", "an old friend from the navy", "a sharp-tongued pilot"),
        (
            "Within the hour {s} learns that {thing} is worth a fortune to the wrong people.",
            "{s} has one night to get {thing} to safety.",
        ),
        ("they are being followed", "the only road out is closed", "every ally has a price"),
        (
            "{hero} makes it across the border at dawn, with {thing} safe.",
            "The chase ends where it began, and {hero} walks away free.",
        ),
        ("Taut and alert", "Racing and urgent", "Breathless relief"),
        ("a low pulse with ticking percussion", "driving drums and staccato strings", "wide brass and strings"),
        ("There is no going back from a night like this.", "Trust nobody, not even the ones who help."),
        "Some chases never really end.",
        ("resourceful", "fearless", "cynical", "quick", "loyal", "reckless"),
        "Across the Line",
    ),
    "drama": Genre(
        "drama",
        "soft morning light",
        ("a quiet coastal town", "a small flat in the city"),
        ("a schoolteacher", "a carpenter"),
        ("an old friend", "a neighbour", "a cousin from the city"),
        (
            "Seeing {thing} brings back a memory that {hero} had tried to bury.",
            "{s} keeps {thing} close, unsure what to do with it.",
        ),
        (
            "an old quarrel comes back to the surface",
            "the past refuses to stay in the past",
            "telling the truth could cost them everything",
        ),
        (
            "{hero} lets go of the past, and {place} feels like home again.",
            "{hero} finally says what {s} should have said years ago.",
        ),
        ("Quiet and reflective", "Tense and aching", "Warm and hopeful"),
        ("a solo piano", "a restless string quartet", "strings and piano together"),
        ("Some days look ordinary until they are not.", "We all carry something we never put down."),
        "Some stories end quietly and stay with you.",
        ("gentle", "proud", "stubborn", "honest", "tired", "kind"),
        "Letting Go",
    ),
}
# Words in a genre as people type it, and the genre they mean.
GENRE_WORDS = (
    ("myster", "mystery"), ("noir", "mystery"), ("crime", "mystery"), ("detective", "mystery"),
    ("horror", "horror"), ("ghost", "horror"), ("scary", "horror"), ("comed", "comedy"), ("funny", "comedy"),
    ("roman", "romance"), ("love", "romance"), ("sci", "science fiction"), ("space", "science fiction"),
    ("future", "science fiction"), ("fantas", "fantasy"), ("fairy", "fantasy"), ("magic", "fantasy"),
    ("advent", "adventure"), ("action", "adventure"), ("thrill", "adventure"), ("western", "adventure"),
)  # fmt: skip

OPENINGS = ("{hero}, {role}, {event}.", "One evening {at}, {hero}, {role}, {event}.")
PAIR_OPENINGS = ("{hero} and {ally}, {role}, {event}.", "One evening {at}, {hero} and {ally}, {role}, {event}.")
ALLY_BEATS = (
    "{s} takes {thing} to {ally}, {ally_role}, the only person {s} trusts with it.",
    "{ally}, {ally_role}, is the first to hear about {thing}.",
)
# The middle of a story, in an order that reads well whichever of them are picked.
MIDDLE = (
    "Together {hero} and {ally} look closer at {thing}, and soon it is clear that {stake0}.",
    "{ally} warns {hero} to let it go, but {s} will not.",
    "Nobody else believes {hero}, so {s} keeps going alone for a while.",
    "Everything seems to lead back to {place}.",
    "{s} remembers something {s} was told as a child, and it suddenly matters.",
    "Soon {stake1}, and {hero} has to decide how far {s} will go.",
    "By {light}, {hero} sees what {s} missed at first.",
    "{ally} admits what {as} has been hiding, and it changes everything.",
    "{hero} and {ally} argue, and for a moment it looks as if they will give up.",
    "Then {stake2}, and there is no time left to waste.",
)
TURNS = (
    "At the last moment, {hero} understands what {thing} has been trying to say.",
    "Then, at the darkest moment, {hero} sees the way through.",
)
CLOSINGS = (
    "{hero} stands {at} in {light}, and for the first time in years {s} is smiling.",
    "In {light}, {hero} looks out from {place}, at peace at last.",
)
MIDDLE_TITLES = (
    "Following the {head}",
    "Back to {place}",
    "A Closer Look",
    "No Turning Back",
    "The Long Night",
    "What {ally} Knew",
    "Alone",
    "The Price",
    "Breaking Point",
    "The Way Through",
)
# How a shot frames a sentence of its segment: with who it is about (when the sentence names
# them), without, and the camera.
FRAMINGS = (
    ("", "Wide establishing shot: {clause}.", "Static wide shot, eye level, 24 mm lens"),
    ("", "Medium shot: {clause}.", "Slow dolly-in, eye level, 35 mm lens"),
    ("Close-up on {name}'s face as {rest}.", "Close-up: {clause}.", "Handheld close-up, 85 mm lens, shallow focus"),
    (
        "Over-the-shoulder shot from behind {name} as {rest}.",
        "Over-the-shoulder shot: {clause}.",
        "Over the shoulder, 50 mm lens",
    ),
    ("", "Low-angle shot: {clause}.", "Low angle, slow tilt up, 28 mm lens"),
)
LOOKS = {
    "ages": ("twenties", "thirties", "forties", "fifties", "sixties"),
    "hair": (
        "short grey hair",
        "long dark braided hair",
        "curly red hair",
        "a shaved head",
        "wavy blond hair tied back",
        "black hair in a neat bob",
    ),
    "clothes": (
        "a navy wool coat",
        "a yellow oilskin jacket",
        "a worn leather jacket",
        "a green knitted jumper",
        "a long charcoal raincoat",
        "a white linen shirt",
    ),
    "extras": ("a red scarf", "round brass spectacles", "heavy work boots", "a silver pendant", "a battered satchel"),
}
QUIRKS = (
    "notices what others miss",
    "hides worry behind jokes",
    "never breaks a promise",
    "trusts too easily",
    "talks to {r} when nervous",
    "keeps every letter {s} has ever received",
)


@dataclass
class Person:
    name: str
    pronoun: str
    role: str = ""
    look: str = ""

    def slots(self, prefix: str = "") -> dict[str, str]:
        s, o, p, r = PRONOUNS.get(self.pronoun, PRONOUNS["she"])
        return {f"{prefix}s": s, f"{prefix}o": o, f"{prefix}p": p, f"{prefix}r": r}


@dataclass
class Idea:
    """An idea's first sentence taken apart: who, what they do, and the thing they do it with."""

    subject: str = ""  # "a lighthouse keeper", "" when the idea names nobody
    event: str = ""  # "finds a message in a bottle"
    plural: bool = False
    name: str = ""  # a hero the idea names ("Anna finds a key")
    thing: str = "the discovery"  # "the message in the bottle"
    head: str = "discovery"  # "message"
    place: str = ""  # "the lighthouse", "" when the idea names no place
    pronoun: str = ""  # "she" or "he" when the idea says
    rest: list[str] = field(default_factory=list)  # its other sentences


def say(template: str, slots: dict[str, str]) -> str:
    """A template filled in as a sentence: capital first letter, one full stop."""
    text = template.format_map(slots).strip()
    text = re.sub(r"\s+", " ", text)
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def sentences_of(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def title_case(text: str) -> str:
    words = text.split()
    return " ".join(w if i and w.lower() in SMALL else w[:1].upper() + w[1:] for i, w in enumerate(words))


def definite(np: str) -> str:
    words = np.split()
    out = ["the" if w.lower() in ("a", "an", "some", "one") else w for w in words]
    if out and out[0] == "The":
        out[0] = "the"
    return " ".join(out)


def bare(word: str) -> str:
    return word.lower().strip(",.;:!?\"'()")


def clause(sentence: str, cast: set[str]) -> str:
    """A sentence to go on after a colon or an "as": no full stop, a small first letter unless it
    begins with a name."""
    body = sentence.strip().rstrip(".!?")
    first = body.split(" ", 1)[0].strip(",")
    return body if first in cast or first == "I" else body[:1].lower() + body[1:]


def read_idea(text: str) -> Idea:
    idea = Idea()
    text = re.sub(r"\s+", " ", text.replace("…", "").replace("...", "")).strip()
    parts = sentences_of(text) or [text]
    first, idea.rest = parts[0].rstrip(".!?"), parts[1:]
    words = first.split()
    lowered = [bare(w) for w in words]
    idea.pronoun = "she" if SHE & set(lowered) else "he" if HE & set(lowered) else ""
    verb = None
    for i in range(1, len(words)):
        w = lowered[i]
        if w in RELATIVE:
            break
        if w in FOLLOWERS or not w.isalpha():
            continue
        nxt = lowered[i + 1] if i + 1 < len(words) else None
        plural = "and" in lowered[:i] or lowered[0] in NUMBERS or (lowered[i - 1].endswith("s") and i > 1)
        # "finds" after its subject is a verb; "robots" after "two", "letters" after "of" are not.
        singular = (
            w.endswith("s")
            and not w.endswith(("ss", "us"))
            and lowered[i - 1] not in FOLLOWERS | NUMBERS | {"and"}
            and "'" not in words[i]
        )
        if w in AUX or singular or (plural and nxt in FOLLOWERS):
            verb = i
            idea.plural = plural and not singular and w not in ("is", "was", "has")
            break
    lowered_places = [w for w in lowered if w in PLACES]
    if lowered_places:
        idea.place = f"the {lowered_places[0]}"
    if verb is None:
        np = noun_phrase(words)
        if np:
            idea.thing, idea.head = definite(" ".join(np)), head_of(np)
        if lowered and lowered[0] in DETERMINERS:
            idea.event = f"comes upon {first[:1].lower()}{first[1:]}"
        else:
            idea.event = f"keeps thinking about {first}"
        return idea
    subject = " ".join(words[:verb]).strip(",")
    if len(words[:verb]) == 1 and words[0][:1].isupper() and lowered[0] not in DETERMINERS | NUMBERS:
        idea.name = words[0].strip(",")
    else:
        idea.subject = subject[:1].lower() + subject[1:] if lowered[0] in DETERMINERS | NUMBERS else subject
    idea.event = " ".join(words[verb:])
    after = words[verb + 1 :]
    if lowered[verb] in AUX and after and bare(after[0]).endswith(("ing", "ed")):
        after = after[1:]
    np = noun_phrase(after)
    if np:
        idea.thing, idea.head = definite(" ".join(np)), head_of(np)
    return idea


def noun_phrase(words: list[str]) -> list[str]:
    start = next((i for i, w in enumerate(words) if bare(w) in DETERMINERS), None)
    if start is None:
        return []
    out: list[str] = []
    for w in words[start : start + 7]:
        if out and bare(w) in NP_STOPS:
            break
        out.append(w.strip(",;:"))
        if w.endswith((",", ";", ":")):
            break
    while len(out) > 1 and bare(out[-1]) in PREPOSITIONS | DETERMINERS:
        out.pop()
    return out


def head_of(np: list[str]) -> str:
    words = [bare(w) for w in np if bare(w) not in DETERMINERS]
    before = []
    for w in words:
        if w in PREPOSITIONS:
            break
        before.append(w)
    return (before or words or ["discovery"])[-1]


def genre_of(text: str) -> Genre:
    lowered = text.lower()
    for word, name in GENRE_WORDS:
        if word in lowered:
            return GENRES[name]
    return GENRES["drama"]


def spread(count: int, parts: int) -> list[int]:
    """`count` things shared out among `parts` as evenly as they go, in order."""
    parts = max(parts, 1)
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


class Teller:
    """A storyteller for one request: what the prompt says, and the words to answer it with."""

    def __init__(self, prompt: str, rng: random.Random) -> None:
        self.rng = rng
        # Only the question: earlier answers and the complaints about them come after it.
        cut = re.search(r"^(?:\{|\[|That answer does not fit)", prompt, re.M)
        self.prompt = prompt[: cut.start()] if cut else prompt
        self.idea_text = self.label(r"(?s)Idea: (.*?)(?:\n(?:Genre|Visual style|Length)|\Z)") or self.last_line()
        genre = self.label(r"^Genre: ([^,\n]*)") or self.label(r"^Film: .*\((.*?), visual style") or ""
        self.genre = genre_of("" if genre == "any genre" else genre)
        style = self.label(r"visual style: ([^\n]*?)\)?$") or self.label(r"^Visual style: (.*)$") or ""
        self.style = "" if style == "any style" else style
        self.title = self.label(r"^Title: (.*)$") or self.label(r"^Film: (.*) \(") or ""
        self.idea = read_idea(self.idea_text)
        self.segments = [
            (int(n), t.strip(), s.strip()) for n, t, s in re.findall(r"^(\d+)\. (.+?): (.+)$", self.prompt, re.M)
        ]
        self.cast = [
            Person(n.strip(), self.pronoun_of(n.strip()), role.strip(), look.strip())
            for n, role, look in re.findall(r"^- (.+?) \((.*?)\): looks (.*?);", self.prompt, re.M)
        ]
        looks = self.prompt.split("How they look:", 1)[1] if "How they look:" in self.prompt else ""
        for n, look in re.findall(r"^- ([^:\n]+): (.+)$", looks, re.M):
            self.cast.append(Person(n.strip(), self.pronoun_of(n.strip()), look=look.strip()))
        self.used: set[str] = set()
        self.chosen: tuple[Person, Person] | None = None
        self.written: list[list[str]] | None = None

    def label(self, pattern: str) -> str:
        m = re.search(pattern, self.prompt, re.M)
        return m.group(1).strip() if m else ""

    def last_line(self) -> str:
        lines = [line.strip() for line in self.prompt.splitlines() if line.strip()]
        line = lines[-1] if lines else "a quiet story"
        return line.split(": ", 1)[1] if ": " in line else line

    def number(self, pattern: str, default: int) -> int:
        m = re.search(pattern, self.prompt)
        return int(m.group(1)) if m else default

    def pronoun_of(self, name: str) -> str:
        if name in KNOWN:
            return KNOWN[name]
        text = self.prompt
        after = text[text.find(name) :] if name in text else ""
        she, he = len(re.findall(r"\b(?:she|her)\b", after, re.I)), len(re.findall(r"\b(?:he|his|him)\b", after, re.I))
        return "he" if he > she else "she"

    # --- the parts of the story -----------------------------------------------------------

    def story_text(self) -> str:
        """The whole story from the idea, in paragraphs."""
        return "\n\n".join(" ".join(p) for p in self.paragraphs())

    def people(self) -> tuple[Person, Person]:
        if self.chosen is None:
            self.chosen = self.choose_people()
        return self.chosen

    def choose_people(self) -> tuple[Person, Person]:
        wanted = self.idea.pronoun
        names = [n for n in NAMES if not wanted or n[1] == wanted]
        named = self.idea.name
        hero = Person(*((named, self.pronoun_of(named)) if named else self.rng.choice(names)))
        ally = Person(*self.rng.choice([n for n in NAMES if n[0] != hero.name]))
        return hero, ally

    def slots(self, hero: Person, ally: Person) -> dict[str, str]:
        g, idea = self.genre, self.idea
        place = idea.place or self.rng.choice(g.places)
        at = "at" if place.split()[-1] in AT_PLACES and place.startswith("the ") else "in"
        slots = {
            "hero": hero.name,
            "ally": ally.name,
            "role": idea.subject or self.rng.choice(g.roles),
            "ally_role": self.rng.choice(g.allies),
            "event": idea.event,
            # Named in full by the event: after it, as people say it again.
            "thing": f"the {idea.head}" if idea.thing.startswith("the ") else idea.thing,
            "head": idea.head,
            "place": place,
            "at": f"{at} {place}",
            "light": g.light,
            **hero.slots(),
            **ally.slots("a"),
        }
        for i, stake in enumerate(g.stakes):
            slots[f"stake{i}"] = stake.format_map(slots)
        return slots

    def paragraphs(self) -> list[list[str]]:
        if self.written is None:
            self.written = self.write()
        return self.written

    def write(self) -> list[list[str]]:
        hero, ally = self.people()
        slots = self.slots(hero, ally)
        pick = self.rng.choice
        seconds = self.number(r"about (\d+) seconds", 60)
        segments = max(1, min(12, round(seconds / 30)))
        opening = [say(pick(PAIR_OPENINGS if self.idea.plural else OPENINGS), slots)]
        opening += [say(s, slots) for s in self.idea.rest[:3]]
        opening.append(say(pick(self.genre.hooks), slots))
        if not self.idea.plural:
            opening.append(say(pick(ALLY_BEATS), slots))
        # About a sentence a shot (of five seconds), within what a short film tells.
        wanted = max(8, min(16, round(seconds / 5)))
        count = max(2, min(len(MIDDLE), wanted - len(opening) - 3, 2 * segments + 4))
        middle = [say(MIDDLE[i], slots) for i in sorted(self.rng.sample(range(len(MIDDLE)), count))]
        ending = [say(pick(TURNS), slots), say(pick(self.genre.endings), slots), say(pick(CLOSINGS), slots)]
        return [opening, middle, ending]

    def story(self) -> dict[str, Any]:
        text = self.story_text()
        hero = self.people()[0].name
        thing = self.idea.thing
        titles = [f"The {self.idea.head}", f"{hero} and the {self.idea.head}"]
        if thing.startswith("the ") and len(thing.split()) <= 6:
            titles.append(thing)
        return {"title": title_case(self.rng.choice(titles)), "text": text}

    def story_in_prompt(self) -> str:
        """The story's text as a later step's prompt gives it: after the genre line, before the segments."""
        m = re.search(r"^Genre: [^\n]*\n\n(.*?)(?:\n\nSegments:|\Z)", self.prompt, re.M | re.S)
        return m.group(1).strip() if m else ""

    def names_in(self, text: str) -> list[str]:
        """The cast named in `text`, in order: the names this sim gives and those the text introduces."""
        found = {m.start(1): m.group(1) for m in re.finditer(r"\b([A-Z][a-z]+), (?:an?|the|one of) ", text)}
        for name, _ in NAMES:
            for m in re.finditer(rf"\b{name}\b", text):
                found.setdefault(m.start(), name)
        known = {p.name for p in self.cast}
        for name in known:
            for m in re.finditer(rf"\b{re.escape(name)}\b", text):
                found.setdefault(m.start(), name)
        order: list[str] = []
        for _, name in sorted(found.items()):
            if name not in order and (name in KNOWN or name in known or text.count(name) > 1):
                order.append(name)
        return order

    def segments_plan(self) -> dict[str, Any]:
        text = self.story_in_prompt() or self.story_text()
        sentences = sentences_of(text)
        wanted = max(1, min(self.number(r"about (\d+) segments", 3), len(sentences), 24))
        groups, at = [], 0
        for size in spread(len(sentences), wanted):
            groups.append(sentences[at : at + size])
            at += size
        names = self.names_in(text)
        head = next((w for w in self.title.split() if w.lower() not in SMALL and w not in names), "")
        place = next((f"the {w}" for w in re.findall(r"[a-z]+", text.lower()) if w in PLACES), "")
        titles: list[str] = []
        middle = [t for t in MIDDLE_TITLES if ("{place}" not in t or place) and ("{ally}" not in t or len(names) > 1)]
        for i in range(len(groups)):
            if len(groups) == 1:
                title = self.title or "The Whole Story"
            elif i == 0:
                title = f"The {head}" if head else "The Beginning"
            elif i == len(groups) - 1:
                title = self.genre.last_title
            else:
                slots = {"head": head.lower() or "trail", "place": place, "ally": names[1] if len(names) > 1 else ""}
                title = title_case(middle[(i - 1) % len(middle)].format_map(slots))
            while title in titles:
                title += " Again"
            titles.append(title)
        return {"segments": [{"title": t, "summary": " ".join(g)} for t, g in zip(titles, groups, strict=True)]}

    def characters_plan(self) -> dict[str, Any]:
        text = self.story_in_prompt() or "\n".join(s for _, _, s in self.segments)
        names = self.names_in(text)[:6]
        if not names:
            names = [n for n, _ in self.rng.sample(NAMES, 2)]
        roles = {m.group(1): m.group(2) for m in re.finditer(r"\b([A-Z][a-z]+), ((?:an?|the|one of) [^,.]+)[,.]", text)}
        for pair in re.finditer(r"\b([A-Z][a-z]+) and ([A-Z][a-z]+), ([^,.]+),", text):
            roles.setdefault(pair.group(1), f"one of {pair.group(3)}")
            roles.setdefault(pair.group(2), f"one of {pair.group(3)}")
        ages, hair, clothes, extras = (list(self.rng.sample(LOOKS[k], len(LOOKS[k]))) for k in LOOKS)
        people = []
        for i, name in enumerate(names):
            person = Person(name, self.pronoun_of(name))
            s, _, p, _ = PRONOUNS[person.pronoun]
            kind = "woman" if person.pronoun == "she" else "man"
            part = "The hero" if i == 0 else "At the hero's side" if i == 1 else "In the story"
            role = roles.get(name) or self.rng.choice(self.genre.allies)
            traits = self.rng.sample(self.genre.traits, 2)
            quirk = self.rng.choice(QUIRKS).format_map(person.slots())
            people.append(
                {
                    "name": name,
                    "role": f"{part}: {role}",
                    "look": say(
                        f"A {kind} in {p} {ages[i % len(ages)]} with {hair[i % len(hair)]}, wearing "
                        f"{clothes[i % len(clothes)]} and {extras[i % len(extras)]}",
                        {},
                    ),
                    "personality": say(f"{traits[0].capitalize()} and {traits[1]}; {s} {quirk}", {}),
                }
            )
        return {"characters": people}

    def cast_names(self) -> set[str]:
        return {p.name for p in self.cast}

    def shot_lines(self, sentences: list[str], count: int, first: int = 0) -> list[tuple[str, str, list[str]]]:
        """`count` shots over `sentences`, in order: (description, camera, characters). A shot
        names who a sentence's "she" or "he" is: a video model reads each prompt alone."""
        cast = {p.name: p.pronoun for p in self.cast}
        last: dict[str, str] = {}
        out = []
        for j in range(count):
            at = round(j * (len(sentences) - 1) / (count - 1)) if count > 1 else 0
            sentence = sentences[at] if sentences else "The story goes on."
            for earlier in sentences[: at + 1]:
                for name in self.names_in(earlier):
                    if name in cast:
                        last[cast[name]] = name
            named = [n for n in self.names_in(sentence) if n in cast]
            seen = [n for earlier in sentences[:at] for n in self.names_in(earlier) if n in cast]
            # Who the story is with when a sentence names nobody: in the picture all the same.
            everyone = named or seen[-1:] or list(cast)[:1]
            lead = sentence.split(" ", 1)
            if lead[0].lower() in ("she", "he") and last.get(lead[0].lower()) and len(lead) > 1:
                who = last[lead[0].lower()]
                sentence, named = f"{who} {lead[1]}", [who, *(n for n in named if n != who)]
            named_form, framing, camera = FRAMINGS[(first + j) % len(FRAMINGS)]
            slots = {"clause": clause(sentence, set(cast)), "name": named[0] if named else "", "rest": ""}
            if named_form and named:
                pronoun = PRONOUNS[cast[named[0]]][0]
                if sentence.startswith(named[0] + " "):
                    slots["rest"] = f"{pronoun} {clause(sentence, set(cast))[len(named[0]) + 1 :]}"
                if "{rest}" not in named_form or slots["rest"]:
                    framing = named_form
            out.append((say(framing, slots), camera, named or everyone))
        return out

    def shots_plan(self) -> dict[str, Any]:
        segments = self.segments or [(1, "The story", self.story_text())]
        wanted = max(len(segments), self.number(r"about (\d+) shots", len(segments)))
        seconds = self.number(r"about (\d+) seconds each", 5)
        weights = [len(sentences_of(s)) for _, _, s in segments]
        counts = [1] * len(segments)
        for _ in range(min(wanted, 300) - len(segments)):
            i = max(range(len(segments)), key=lambda k: weights[k] / counts[k])
            counts[i] += 1
        shots = []
        for (number, _, summary), count in zip(segments, counts, strict=True):
            for description, camera, named in self.shot_lines(sentences_of(summary), count):
                duration = max(1.0, seconds + self.rng.choice((-1.0, -0.5, 0.0, 0.0, 0.5, 1.0)))
                shots.append(
                    {
                        "segment": number,
                        "description": description,
                        "camera": camera,
                        "duration": duration,
                        "characters": named,
                    }
                )
        fit_length(shots, self.number(r"The film lasts (\d+) seconds", 0), 20.0)
        return {"shots": shots}

    def scenes_plan(self) -> dict[str, Any]:
        segments = self.segments or [(1, "The story", self.story_text())]
        wanted = max(len(segments), self.number(r"about (\d+) HoloCine scenes", len(segments)))
        scenes = []
        for (number, title, summary), count in zip(segments, spread(wanted, len(segments)), strict=True):
            sentences = sentences_of(summary)
            for k, group in enumerate(self.groups(sentences, count)):
                lines = self.shot_lines(group, max(2, min(4, len(group) + 1)), first=k)
                scenes.append(
                    {
                        "segment": number,
                        "title": title if count == 1 else f"{title}, part {k + 1}",
                        "description": " ".join(group),
                        "shots": [d for d, _, _ in lines],
                        "duration": 5.0 * len(lines),
                        "characters": sorted({n for _, _, named in lines for n in named}),
                    }
                )
        fit_length(scenes, self.number(r"The film lasts (\d+) seconds", 0), 60.0)
        return {"scenes": scenes}

    @staticmethod
    def groups(sentences: list[str], count: int) -> list[list[str]]:
        if len(sentences) < count:
            return [[sentences[i % len(sentences)]] if sentences else ["The story goes on."] for i in range(count)]
        out, at = [], 0
        for size in spread(len(sentences), count):
            out.append(sentences[at : at + size])
            at += size
        return out

    def visual_prompt(self) -> dict[str, Any]:
        piece = self.label(r"(?s)^(?:Shot|Scene) \d+: (.*?)(?:\nIts shots, in order:|\n\nCharacters in it:|\Z)")
        listed = self.label(r"(?s)^Its shots, in order:\n(.*?)(?:\n\n|\Z)")
        shots = re.findall(r"^- (.+)$", listed, re.M)[:8]
        looks = " ".join(say(f"{p.name} is {p.look[:1].lower()}{p.look[1:]}", {}) for p in self.cast if p.look)
        style = self.style or "cinematic realism"
        parts = [say(piece or self.rng.choice(sentences_of(self.story_text())), {})]
        if shots:
            parts.append("In order: " + " ".join(say(s, {}) for s in shots))
        if looks:
            parts.append(looks)
        mood = self.genre.moods[1].lower()
        parts.append(say(f"{style[:1].upper()}{style[1:]}, {self.genre.light}, {mood} mood, fine detail", {}))
        drawn = any(w in style.lower() for w in DRAWN)
        wrong = "photographic skin texture" if drawn else "cartoon style, oversaturated colours"
        negative = f"Blurry, low resolution, distorted faces, extra fingers, flickering, text, watermark, {wrong}."
        return {"positive": " ".join(parts), "negative": negative}

    def narration_plan(self) -> dict[str, Any]:
        segments = self.segments or [(1, "The story", self.story_text())]
        lines = []
        for i, (number, _, summary) in enumerate(segments):
            sentences = sentences_of(summary) or ["The story goes on."]
            spoken = [sentences[0]] if len(sentences) < 3 else [sentences[0], sentences[-1]]
            if i == 0:
                spoken.insert(0, self.rng.choice(self.genre.openers))
            if i == len(segments) - 1:
                spoken.append(say(self.genre.closer, {}))
            lines.append({"segment": number, "text": " ".join(spoken)})
        return {"lines": lines}

    def music_plan(self) -> dict[str, Any]:
        segments = self.segments or [(1, "The story", "")]
        cues = []
        last = len(segments) - 1
        for i, (number, title, _) in enumerate(segments):
            stage = 0 if i == 0 else 2 if i == last else 1
            start = ("with a single held note", "on a restless low pulse", "softly out of the last cue")[stage]
            end = ("on an unresolved chord", "cut off at its loudest", "on a long, warm chord")[stage]
            tempo = ("a slow tempo", "a quickening tempo", "an easy tempo")[stage]
            cues.append(
                {
                    "segment": number,
                    "mood": self.genre.moods[stage],
                    "description": say(
                        f"For {title}: {self.genre.music[stage]} at {tempo}; it starts {start} and ends {end}", {}
                    ),
                }
            )
        return {"cues": cues}

    def plan(self, schema: dict[str, Any]) -> dict[str, Any] | None:
        """What the fields of the answer a schema asks for should say, or None for a schema that is
        not one of the story steps' (its fields are written one by one, by `text`)."""
        keys = set(schema.get("properties", {}))
        if {"title", "text"} <= keys:
            return self.story()
        if "segments" in keys:
            return self.segments_plan()
        if "characters" in keys:
            return self.characters_plan()
        if "shots" in keys:
            return self.shots_plan()
        if "scenes" in keys:
            return self.scenes_plan()
        if {"positive", "negative"} <= keys:
            return self.visual_prompt()
        if "lines" in keys:
            return self.narration_plan()
        if "cues" in keys:
            return self.music_plan()
        return None

    # --- any other field, by its name -------------------------------------------------------

    def sentence(self) -> str:
        """One sentence of the story, a different one each time while they last."""
        sentences = [s for p in self.paragraphs() for s in p]
        fresh = [s for s in sentences if s not in self.used] or sentences
        chosen = fresh[0] if len(self.used) < len(sentences) else self.rng.choice(sentences)
        self.used.add(chosen)
        return chosen

    def text(self, name: str) -> str:
        key = name.lower()
        if "title" in key:
            return str(self.story()["title"])
        if key in ("text", "story", "answer", "content", "body", "response"):
            return self.story_text()
        if "camera" in key:
            return self.rng.choice(FRAMINGS)[2]
        if "mood" in key:
            return self.rng.choice(self.genre.moods)
        if "style" in key:
            return self.style or "cinematic realism"
        if "genre" in key:
            return self.genre.name
        if "negative" in key:
            return str(self.visual_prompt()["negative"])
        if any(k in key for k in ("name", "subject", "character", "who", "cast")):
            hero, ally = self.people()
            return self.rng.choice((hero.name, ally.name, self.idea.head))
        if any(k in key for k in ("label", "id", "key", "tag", "slug")):
            words = [w for w in re.findall(r"[A-Za-z]{3,}", self.idea_text) if w.lower() not in FOLLOWERS] or ["story"]
            return " ".join(self.rng.choice(words).capitalize() for _ in range(2))
        return self.sentence()


def fit_length(pieces: list[dict[str, Any]], seconds: int, longest: float) -> None:
    """Scale the pieces' durations so that they add up to the film's length (as a model told the
    length would), each between 1 s and `longest`, to a tenth of a second."""
    total = sum(p["duration"] for p in pieces)
    if not seconds or not total:
        return
    for p in pieces:
        p["duration"] = min(longest, max(1.0, round(p["duration"] * seconds / total, 1)))
