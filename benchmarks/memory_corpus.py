"""A generated memory benchmark: users with facts, questions that paraphrase a fact, distractors.

Deterministic (a seeded ``random.Random``), so every run and every machine measures the same corpus.
Each user holds one fact per topic (the topic's template with a value drawn for that user) and one
distractor per topic: a fact about something else that shares the paraphrased question's words, so a
ranking by shared words alone puts it first. Each topic is asked two ways, as people ask a memory:

- **paraphrase**: the question says it in other words, sharing no content word with the fact
  (stopwords aside): the vocabulary gap lexical search alone cannot close;
- **direct**: the question names the fact's subject with one of the fact's own words (never the
  value it asks for): "What am I allergic to?" for "Is allergic to peanuts". Here the words are the
  strongest evidence, and an embedding of a small model the weaker one.

Each user also keeps ``RECORDS`` records of each of some ``FAMILIES``, alike but for a name or a
code (eight support tickets, eight contacts, eight projects, eight flights), and each record is asked
for by that name:

- **named**: "What is ticket INC-482 about?" among the user's eight tickets. The code is the only
  evidence that tells the records apart, and a small embedding model spreads it thin (a code is
  several word pieces, a name a few), where BM25 weighs the one rare term highest: the case where
  words beat meaning, as the paraphrase is the case where meaning beats words.

A question's answer is that user's fact of the topic (or the record named), searched among that user's
memories as a chat's gather reads them. The topics are hand-written English, as a memory layer sees it
(mem0 keeps facts like "Is allergic to peanuts").
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    fact: str  # "{v}" is the user's value
    values: tuple[str, ...]
    question: str  # shares no content word with ``fact``
    distractor: str  # shares words with ``question``, answers something else
    direct: str  # names the fact's subject in one of its own words (not the value): a keyword question


TOPICS: tuple[Topic, ...] = (
    Topic(
        "Is allergic to {v}",
        ("peanuts", "shellfish", "gluten", "sesame", "kiwi", "eggs"),
        "Which foods make me sick?",
        "My neighbour says fried foods make her sleepy",
        "What am I allergic to?",
    ),
    Topic(
        "Works as a {v} at a hospital",
        ("nurse", "radiologist", "pharmacist", "surgeon", "porter", "paramedic"),
        "What is my job?",
        "Finished the painting job in the kitchen last weekend",
        "What do I do at the hospital?",
    ),
    Topic(
        "Has a {v} called Biscuit",
        ("beagle", "tabby cat", "parrot", "rabbit", "labrador", "hamster"),
        "What kind of pet do I own?",
        "Wants to own a small boat one day, of any kind",
        "What is Biscuit?",
    ),
    Topic(
        "Grew up in {v}",
        ("Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Valparaiso"),
        "Which city is my hometown?",
        "Thinks the city council should fund more bike lanes",
        "Where was it that I grew up?",
    ),
    Topic(
        "Prefers answers written in {v}",
        ("Portuguese", "Japanese", "Swahili", "French", "Polish", "Spanish"),
        "What language should you reply in?",
        "Is learning the sign language alphabet with a friend",
        "How should answers be written?",
    ),
    Topic(
        "Is training for a {v} in the spring",
        ("marathon", "triathlon", "half marathon", "cycling race", "swim meet", "trail ultra"),
        "What athletic event am I preparing for?",
        "Preparing a surprise event for a colleague who is retiring",
        "What am I training for?",
    ),
    Topic(
        "Drives a {v}",
        ("red hatchback", "electric pickup", "vintage beetle", "hybrid sedan", "motorbike", "camper van"),
        "What vehicle do I have?",
        "Would have liked a bigger garden behind the house",
        "What do I drive?",
    ),
    Topic(
        "Is vegetarian and never eats {v}",
        ("meat", "fish", "poultry", "pork", "beef", "lamb"),
        "Are there dietary restrictions for my meals?",
        "The restrictions on parking near the office start on Monday",
        "What do I never eat?",
    ),
    Topic(
        "Has two daughters and one {v}",
        ("son", "stepson", "foster son", "nephew at home", "adopted son", "baby boy"),
        "How many children are in my family?",
        "The family reunion is planned for the summer at the lake",
        "Who is my child besides my two daughters?",
    ),
    Topic(
        "Plays the {v} in a community band",
        ("trumpet", "saxophone", "clarinet", "trombone", "tuba", "flute"),
        "Which musical instrument can I perform on?",
        "Can perform basic first aid after a weekend course",
        "What do I play in the band?",
    ),
    Topic(
        "Takes {v} each morning for blood pressure",
        ("lisinopril", "amlodipine", "losartan", "metoprolol", "ramipril", "valsartan"),
        "What medication am I on?",
        "Keeps the medication cabinet in the hallway locked",
        "What do I take for my blood pressure?",
    ),
    Topic(
        "Studied {v} at university",
        ("marine biology", "civil engineering", "art history", "economics", "philosophy", "chemistry"),
        "What was my degree subject?",
        "The thermostat is set two degrees lower at night",
        "What did I study at university?",
    ),
    Topic(
        "Lives in a flat on the {v} floor",
        ("third", "fifth", "ground", "seventh", "second", "tenth"),
        "Where is my apartment located in the building?",
        "The building next door has a new bakery on the corner",
        "Which floor is my flat on?",
    ),
    Topic(
        "Is saving money to buy a {v}",
        ("sailboat", "house", "piano", "telescope", "cabin", "camper"),
        "What big purchase is my goal?",
        "Scored the winning goal for the office football team",
        "What am I saving money for?",
    ),
    Topic(
        "Cannot stand {v} music",
        ("country", "heavy metal", "techno", "opera", "jazz", "reggaeton"),
        "Which songs should be avoided when I am around?",
        "Avoided the motorway because of roadworks around the bridge",
        "What music can I not stand?",
    ),
    Topic(
        "Speaks {v} with the grandparents",
        ("Cantonese", "Hindi", "Greek", "Tagalog", "Arabic", "Italian"),
        "Which tongue do I use with my family elders?",
        "Burnt the tongue on hot soup at the family dinner",
        "What do I speak with the grandparents?",
    ),
    Topic(
        "Wakes up at {v} every day",
        ("five", "six", "half past four", "seven", "dawn", "a quarter to six"),
        "When does my morning start?",
        "The morning train was cancelled twice this month",
        "What time do I wake up?",
    ),
    Topic(
        "Is afraid of {v}",
        ("spiders", "heights", "deep water", "thunderstorms", "needles", "crowds"),
        "What scares me?",
        "Watched a film that scares most people but found it dull",
        "What am I afraid of?",
    ),
    Topic(
        "Supports {v} football club",
        ("Benfica", "Arsenal", "Boca Juniors", "Ajax", "Celtic", "Napoli"),
        "Which team am I a fan of?",
        "Bought a quiet ceiling fan for the bedroom",
        "Which football club do I support?",
    ),
    Topic(
        "Commutes by {v}",
        ("tram", "ferry", "bicycle", "scooter", "metro", "bus"),
        "How do I get to the office?",
        "The office printer jams when paper is damp",
        "How do I commute?",
    ),
    Topic(
        "Celebrates a birthday on {v}",
        ("March 3", "July 19", "October 30", "January 12", "May 25", "December 8"),
        "When should you congratulate me for getting older?",
        "Getting older relatives to use video calls has been slow",
        "When is my birthday?",
    ),
    Topic(
        "Keeps a {v} diet for diabetes",
        ("low sugar", "low carb", "high fibre", "low glycaemic", "portion controlled", "sugar free"),
        "Do I have a chronic health condition?",
        "The health insurance renewal letter arrived in the post",
        "What diet do I follow?",
    ),
    Topic(
        "Is married to Sam, a {v}",
        ("teacher", "pilot", "chef", "lawyer", "plumber", "dentist"),
        "Who is my spouse and what do they do?",
        "What to do about the leaking tap is still undecided",
        "What does Sam do?",
    ),
    Topic(
        "Uses a {v} laptop for coding",
        ("Linux", "Mac", "Windows", "ChromeOS", "FreeBSD", "Ubuntu"),
        "Which operating system is on my computer?",
        "The computer at the library has a sticky keyboard",
        "What laptop do I use?",
    ),
)


@dataclass(frozen=True)
class Family:
    """Records alike but for a name: ``fact`` with ``{name}`` and ``{v}``, asked for by ``question``."""

    fact: str
    names: tuple[str, ...]  # a name, or a code's prefix that ``code_digits`` random digits follow
    # (three digits: real enough, and the latency corpus's million memories hold ~41,000 distinct texts
    # to embed, not one per record)
    values: tuple[str, ...]
    question: str  # names the record: "{name}" only
    code_digits: int = 0


FAMILIES: tuple[Family, ...] = (
    Family(
        "Ticket {name} is about the {v}",
        ("INC-",),
        (
            "login timeout",
            "broken invoice export",
            "slow dashboard",
            "missing reset emails",
            "duplicate payments",
            "wrong tax rate",
            "expired certificate",
            "lost file uploads",
        ),
        "What is ticket {name} about?",
        code_digits=3,
    ),
    Family(
        "{name} is my {v}",
        (
            "Ingrid Solberg",
            "Tomasz Kowalczyk",
            "Amara Okafor",
            "Luis Echeverria",
            "Mei Tanaka",
            "Rhys Pritchard",
            "Farah Haddad",
            "Nils Lindqvist",
            "Chiara Bellini",
            "Kwame Mensah",
        ),
        (
            "accountant",
            "dentist",
            "landlord",
            "piano teacher",
            "physiotherapist",
            "lawyer",
            "mechanic",
            "optician",
        ),
        "Who is {name}?",
    ),
    Family(
        "Project {name} is the {v}",
        ("Bluefin", "Marigold", "Tamarack", "Quillon", "Saffron", "Kestrel", "Juniper", "Halyard", "Obsidian", "Wren"),
        (
            "billing rewrite",
            "mobile redesign",
            "data migration",
            "search upgrade",
            "office move",
            "security audit",
            "pricing change",
            "support chatbot",
        ),
        "What is project {name}?",
    ),
    Family(
        "Flight {name} takes me to {v}",
        ("KL", "TP", "LH", "AF", "IB"),
        ("Oslo", "Lima", "Hanoi", "Dakar", "Perth", "Quito", "Riga", "Tunis"),
        "Where does flight {name} go?",
        code_digits=3,
    ),
)
RECORDS = 8  # of each family, per user
MEMORIES_PER_USER = 2 * len(TOPICS) + RECORDS * len(FAMILIES)


@dataclass(frozen=True)
class Memory:
    id: str
    user_id: str
    text: str
    topic: int  # -1: a record or small talk, of no topic
    distractor: bool


STYLES = ("paraphrase", "direct", "named")


@dataclass(frozen=True)
class Question:
    user_id: str
    text: str
    answer_id: str
    style: str  # one of ``STYLES``


def user_id(number: int) -> str:
    return f"user-{number:06d}"


def records(user_number: int) -> list[tuple[Memory, str]]:
    """A user's records and the question naming each: ``RECORDS`` of each family, with distinct
    names and values, drawn from the user's own seed (a question can name one without the rest of the
    corpus)."""
    rng = random.Random(1_000_003 * 15 + user_number)
    user = user_id(user_number)
    found = []
    for family_number, family in enumerate(FAMILIES):
        if family.code_digits:
            low = 10 ** (family.code_digits - 1)
            names = [f"{rng.choice(family.names)}{code}" for code in rng.sample(range(low, 10 * low), RECORDS)]
        else:
            names = rng.sample(family.names, RECORDS)
        for number, (name, value) in enumerate(zip(names, rng.sample(family.values, RECORDS), strict=True)):
            memory = Memory(f"{user}-n{family_number}{number}", user, family.fact.format(name=name, v=value), -1, False)
            found.append((memory, family.question.format(name=name)))
    return found


def memories(users: int, seed: int = 15) -> Iterator[Memory]:
    """Every user's memories: a fact and a distractor per topic, then the user's records."""
    rng = random.Random(seed)
    for number in range(users):
        user = user_id(number)
        for topic_number, topic in enumerate(TOPICS):
            value = rng.choice(topic.values)
            yield Memory(f"{user}-t{topic_number:02d}", user, topic.fact.format(v=value), topic_number, False)
            yield Memory(f"{user}-d{topic_number:02d}", user, topic.distractor, topic_number, True)
        yield from (memory for memory, _ in records(number))


def question(user_number: int, topic_number: int, style: str = "paraphrase") -> Question:
    """A question of a topic for one user (paraphrased or direct); its answer is that user's fact of the
    topic."""
    user = user_id(user_number)
    topic = TOPICS[topic_number]
    text = topic.question if style == "paraphrase" else topic.direct
    return Question(user, text, f"{user}-t{topic_number:02d}", style)


def named_questions(user_number: int) -> list[Question]:
    """A question for each of a user's records, naming it."""
    user = user_id(user_number)
    return [Question(user, asked, memory.id, "named") for memory, asked in records(user_number)]


def user_questions(user_number: int) -> list[Question]:
    """Every question of one user: each topic paraphrased and direct, each record named."""
    topical = [question(user_number, topic, style) for topic in range(len(TOPICS)) for style in STYLES[:2]]
    return topical + named_questions(user_number)


def questions(users: int) -> Iterator[Question]:
    """Every user's questions (``user_questions``)."""
    for number in range(users):
        yield from user_questions(number)


def distinct_texts(users: int) -> list[str]:
    """Every distinct memory text of ``users`` users (a value repeats across users): what to embed."""
    return sorted({memory.text for memory in memories(users)})


_FILLER_SUBJECTS = (
    "a podcast about the history of maps",
    "the new bakery's sourdough",
    "a documentary on coral reefs",
    "the quiz night at the pub",
    "a crossword that took all evening",
    "the neighbour's noisy renovation",
    "a museum exhibition of old clocks",
    "the price of train tickets",
    "a board game with too many rules",
    "the garden's first tomatoes",
    "a novel set on a lighthouse",
    "the broken umbrella",
    "a cooking class for dumplings",
    "the library's late fees",
    "a concert in the park",
    "the slow internet at home",
    "a trip to the flea market",
    "the office coffee machine",
    "a chess puzzle from the newspaper",
    "the winter coat sale",
)
_FILLER_TAKES = (
    "Mentioned {s} in passing",
    "Talked for a while about {s}",
    "Was amused by {s}",
    "Complained about {s}",
    "Recommended {s} to a friend",
    "Asked a question about {s}",
    "Wrote a short note about {s}",
    "Laughed about {s}",
    "Was curious about {s}",
    "Forgot about {s} until today",
    "Changed their mind about {s}",
    "Read a review of {s}",
    "Took a photo of {s}",
    "Made plans around {s}",
    "Was reminded of {s}",
    "Shared a story about {s}",
    "Had mixed feelings about {s}",
    "Searched online for {s}",
    "Argued about {s}",
    "Lost interest in {s}",
)
FILLERS = len(_FILLER_SUBJECTS) * len(_FILLER_TAKES)  # distinct filler texts


def filler(user: str, count: int) -> Iterator[Memory]:
    """``count`` (at most ``FILLERS``) memories of small talk for ``user``, answering no question:
    what a long-time user's memory holds beside the facts that matter (topic -1)."""
    for number in range(min(count, FILLERS)):
        take, subject = divmod(number, len(_FILLER_SUBJECTS))
        text = _FILLER_TAKES[take].format(s=_FILLER_SUBJECTS[subject])
        yield Memory(f"{user}-f{number:03d}", user, text, -1, True)
