"""A generated memory benchmark: users with facts, questions that paraphrase a fact, distractors.

Deterministic (a seeded ``random.Random``), so every run and every machine measures the same corpus.
Each user holds one fact per topic (the topic's template with a value drawn for that user) and one
distractor per topic: a fact about something else that shares the question's words, so a ranking by
shared words alone puts it first. A question paraphrases its fact without repeating the fact's
content words (stopwords and the user's own name aside); the question's answer is that user's fact
of the topic, searched among that user's memories as a chat's gather reads them.

The topics are hand-written English, as a memory layer sees it (mem0 keeps facts like "Is allergic to
peanuts"): the point is a vocabulary gap between how a fact was said and how it is asked for later,
the case lexical search alone cannot close.
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


TOPICS: tuple[Topic, ...] = (
    Topic(
        "Is allergic to {v}",
        ("peanuts", "shellfish", "gluten", "sesame", "kiwi", "eggs"),
        "Which foods make me sick?",
        "My neighbour says fried foods make her sleepy",
    ),
    Topic(
        "Works as a {v} at a hospital",
        ("nurse", "radiologist", "pharmacist", "surgeon", "porter", "paramedic"),
        "What is my job?",
        "Finished the painting job in the kitchen last weekend",
    ),
    Topic(
        "Has a {v} called Biscuit",
        ("beagle", "tabby cat", "parrot", "rabbit", "labrador", "hamster"),
        "What kind of pet do I own?",
        "Wants to own a small boat one day, of any kind",
    ),
    Topic(
        "Grew up in {v}",
        ("Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Valparaiso"),
        "Which city is my hometown?",
        "Thinks the city council should fund more bike lanes",
    ),
    Topic(
        "Prefers answers written in {v}",
        ("Portuguese", "Japanese", "Swahili", "French", "Polish", "Spanish"),
        "What language should you reply in?",
        "Is learning the sign language alphabet with a friend",
    ),
    Topic(
        "Is training for a {v} in the spring",
        ("marathon", "triathlon", "half marathon", "cycling race", "swim meet", "trail ultra"),
        "What athletic event am I preparing for?",
        "Preparing a surprise event for a colleague who is retiring",
    ),
    Topic(
        "Drives a {v}",
        ("red hatchback", "electric pickup", "vintage beetle", "hybrid sedan", "motorbike", "camper van"),
        "What vehicle do I have?",
        "Would have liked a bigger garden behind the house",
    ),
    Topic(
        "Is vegetarian and never eats {v}",
        ("meat", "fish", "poultry", "pork", "beef", "lamb"),
        "Are there dietary restrictions for my meals?",
        "The restrictions on parking near the office start on Monday",
    ),
    Topic(
        "Has two daughters and one {v}",
        ("son", "stepson", "foster son", "nephew at home", "adopted son", "baby boy"),
        "How many children are in my family?",
        "The family reunion is planned for the summer at the lake",
    ),
    Topic(
        "Plays the {v} in a community band",
        ("trumpet", "saxophone", "clarinet", "trombone", "tuba", "flute"),
        "Which musical instrument can I perform on?",
        "Can perform basic first aid after a weekend course",
    ),
    Topic(
        "Takes {v} each morning for blood pressure",
        ("lisinopril", "amlodipine", "losartan", "metoprolol", "ramipril", "valsartan"),
        "What medication am I on?",
        "Keeps the medication cabinet in the hallway locked",
    ),
    Topic(
        "Studied {v} at university",
        ("marine biology", "civil engineering", "art history", "economics", "philosophy", "chemistry"),
        "What was my degree subject?",
        "The thermostat is set two degrees lower at night",
    ),
    Topic(
        "Lives in a flat on the {v} floor",
        ("third", "fifth", "ground", "seventh", "second", "tenth"),
        "Where is my apartment located in the building?",
        "The building next door has a new bakery on the corner",
    ),
    Topic(
        "Is saving money to buy a {v}",
        ("sailboat", "house", "piano", "telescope", "cabin", "camper"),
        "What big purchase is my goal?",
        "Scored the winning goal for the office football team",
    ),
    Topic(
        "Cannot stand {v} music",
        ("country", "heavy metal", "techno", "opera", "jazz", "reggaeton"),
        "Which songs should be avoided when I am around?",
        "Avoided the motorway because of roadworks around the bridge",
    ),
    Topic(
        "Speaks {v} with the grandparents",
        ("Cantonese", "Hindi", "Greek", "Tagalog", "Arabic", "Italian"),
        "Which tongue do I use with my family elders?",
        "Burnt the tongue on hot soup at the family dinner",
    ),
    Topic(
        "Wakes up at {v} every day",
        ("five", "six", "half past four", "seven", "dawn", "a quarter to six"),
        "When does my morning start?",
        "The morning train was cancelled twice this month",
    ),
    Topic(
        "Is afraid of {v}",
        ("spiders", "heights", "deep water", "thunderstorms", "needles", "crowds"),
        "What scares me?",
        "Watched a film that scares most people but found it dull",
    ),
    Topic(
        "Supports {v} football club",
        ("Benfica", "Arsenal", "Boca Juniors", "Ajax", "Celtic", "Napoli"),
        "Which team am I a fan of?",
        "Bought a quiet ceiling fan for the bedroom",
    ),
    Topic(
        "Commutes by {v}",
        ("tram", "ferry", "bicycle", "scooter", "metro", "bus"),
        "How do I get to the office?",
        "The office printer jams when paper is damp",
    ),
    Topic(
        "Celebrates a birthday on {v}",
        ("March 3", "July 19", "October 30", "January 12", "May 25", "December 8"),
        "When should you congratulate me for getting older?",
        "Getting older relatives to use video calls has been slow",
    ),
    Topic(
        "Keeps a {v} diet for diabetes",
        ("low sugar", "low carb", "high fibre", "low glycaemic", "portion controlled", "sugar free"),
        "Do I have a chronic health condition?",
        "The health insurance renewal letter arrived in the post",
    ),
    Topic(
        "Is married to Sam, a {v}",
        ("teacher", "pilot", "chef", "lawyer", "plumber", "dentist"),
        "Who is my spouse and what do they do?",
        "What to do about the leaking tap is still undecided",
    ),
    Topic(
        "Uses a {v} laptop for coding",
        ("Linux", "Mac", "Windows", "ChromeOS", "FreeBSD", "Ubuntu"),
        "Which operating system is on my computer?",
        "The computer at the library has a sticky keyboard",
    ),
)


@dataclass(frozen=True)
class Memory:
    id: str
    user_id: str
    text: str
    topic: int
    distractor: bool


@dataclass(frozen=True)
class Question:
    user_id: str
    text: str
    answer_id: str


def user_id(number: int) -> str:
    return f"user-{number:06d}"


def memories(users: int, seed: int = 15) -> Iterator[Memory]:
    """Every user's memories: a fact and a distractor per topic."""
    rng = random.Random(seed)
    for number in range(users):
        user = user_id(number)
        for topic_number, topic in enumerate(TOPICS):
            value = rng.choice(topic.values)
            yield Memory(f"{user}-t{topic_number:02d}", user, topic.fact.format(v=value), topic_number, False)
            yield Memory(f"{user}-d{topic_number:02d}", user, topic.distractor, topic_number, True)


def question(user_number: int, topic_number: int) -> Question:
    """The question of a topic for one user; its answer is that user's fact of the topic."""
    user = user_id(user_number)
    return Question(user, TOPICS[topic_number].question, f"{user}-t{topic_number:02d}")


def questions(users: int) -> Iterator[Question]:
    """Every user's question of every topic."""
    for number in range(users):
        for topic_number in range(len(TOPICS)):
            yield question(number, topic_number)


def distinct_texts(users: int) -> list[str]:
    """Every distinct memory text of ``users`` users (a value repeats across users): what to embed."""
    return sorted({memory.text for memory in memories(users)})
