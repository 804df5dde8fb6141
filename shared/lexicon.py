"""Word lists the verifier reasons with.

Sentence embeddings are nearly blind to the words listed here: swapping "enable" for "disable",
"vegan" for "vegetarian" or "monthly" for "annual" moves all-MiniLM-L6-v2's cosine by a few
hundredths. The verifier therefore compares these words explicitly. Every list is data: a
:class:`Lexicon` can be extended from settings without touching code.

Entries are plain lower-case words; the verifier stems them the same way it stems the texts.
Multi-word entries ("part time") are matched on the hyphen-free, space-joined form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Words that carry no meaning a cached answer depends on: articles, auxiliaries, pronouns,
# politeness and filler. Wh-words are *not* here: "where is my order" and "when is my order"
# are different questions.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any either what which how whether
is are was were be been being am do does did doing done have has had having get gets got getting
can could may might must shall should will would
i me my mine myself we us our ours you your yours yourself he him his she her it its they them their
to of in on at by for with about as into like through per via within
and or but so if then also just only really actually usually basically currently still even
please kindly thanks thank hi hello hey ok okay wondering wonder
tell know let want wanted need needed like would love help trying try able possible possibly
show give provide explain describe obtain receive u ur r pls plz thx
check see view look fetch retrieve find
way ways go going about there here thing things exactly one someone anyone
um uh er erm hmm yeah yep oh well
""".split())

# Wording that asks the same thing: members of a set are interchangeable *as whole words*.
# Keep it conservative: "remove" and "delete" are not here ("remove a user from a workspace" is
# not "delete a user").
SYNONYMS: tuple[frozenset[str], ...] = tuple(frozenset(group.split()) for group in (
    "buy purchase", "cost price charge fee fees pricing", "shipping delivery postage",
    "start begin commence", "finish end", "change update modify edit amend",
    "create make generate setup set-up configure", "delete remove erase",
    "show display list", "find locate", "fix repair resolve", "error bug issue problem",
    "big large", "small little", "fast quick quickly rapid", "correct right",
    "wrong incorrect", "pic picture photo image", "car vehicle auto", "movie film",
    "phone mobile cell cellphone smartphone", "email e-mail", "website site webpage",
    "kids children child kid", "holiday vacation", "flat apartment", "lift elevator",
    "enable turn-on switch-on activate", "disable turn-off switch-off deactivate",
    "monthly", "annual annually yearly", "weekly", "daily", "quarterly", "hourly",
    "usd dollar dollars $", "gbp pound pounds sterling £", "eur euro euros €", "a.m morning",
    "hand cabin carry-on", "international overseas abroad", "weather forecast",
    "parcel package", "shop store", "cancel terminate", "reply respond answer",
    "submit send file lodge", "book reserve", "booking reservation", "mistake error",
    "refund reimbursement", "money cash funds", "street road", "previous earlier prior",
    "register enrol enroll signup sign-up", "talk speak", "contact reach",
    "job role position", "salary pay wage wages", "doctor gp physician",
    "medicine medication drug", "explain describe", "summarize summarise sum", "quickest fastest",
    "cheapest least-expensive", "timetable schedule", "difference differences",
    "example examples", "instructions steps", "documentation docs", "repo repository",
    "app application", "program programme", "password passcode", "username login",
))

# Multi-word expressions read as one word before comparing ("sign up" is "signup").
PHRASES: dict[tuple[str, ...], str] = {
    tuple(k.split()): v for k, v in {
        "sign up": "signup", "set up": "setup", "log in": "login", "log on": "login",
        "log out": "logout", "sign in": "signin", "sign out": "signout", "turn on": "turn-on",
        "turn off": "turn-off", "switch on": "switch-on", "switch off": "switch-off",
        "what time": "?time", "a lot of": "many", "lots of": "many",
        "part time": "part-time", "full time": "full-time", "in store": "in-store",
        "self employed": "self-employed", "gluten free": "gluten-free", "dairy free": "dairy-free",
        "first class": "first-class", "carry on": "carry-on", "e mail": "email",
        "in person": "in-person",
        "is it possible to": "can", "am i able to": "can", "are you able to": "can",
        "go live": "activate", "get back": "refund", "money back": "refund",
        "look up": "find", "figure out": "find", "find out": "find",
        "come with": "include", "at least": "minimum", "at most": "maximum",
        "no longer": "not", "not any": "no", "up to": "maximum", "check in": "checkin",
        "check out": "checkout", "opt in": "opt-in", "opt out": "opt-out",
        "per month": "monthly", "a month": "monthly", "each month": "monthly",
        "every month": "monthly", "per year": "yearly", "a year": "yearly", "each year": "yearly",
        "every year": "yearly", "per week": "weekly", "a week": "weekly", "each week": "weekly",
        "every week": "weekly", "per day": "daily", "a day": "daily", "each day": "daily",
        "every day": "daily", "per hour": "hourly", "an hour": "hourly",
        "how long": "?duration", "how much": "?amount", "how many": "?count",
        "how often": "?frequency", "how far": "?distance", "how old": "?age",
        "what year": "?time", "which year": "?time", "what date": "?time", "when": "?time",
        "where": "?place", "who": "?person", "whom": "?person", "whose": "?person",
        "why": "?reason", "how come": "?reason", "two factor authentication": "2fa",
        "multi factor authentication": "mfa",
    }.items()
}

# Question types read from the phrases above. Two requests asking different types ("how long
# does shipping take" / "how much does shipping cost") are different requests, except for the
# compatible pairs listed here.
COMPATIBLE_QUESTION_TYPES = frozenset({frozenset({"?duration", "?count"}), frozenset({"?time", "?duration"})})

# Negation words: the count of these must match on both sides.
NEGATIONS = frozenset("not no never without none nobody nothing nowhere neither nor non".split())

# Opposites. A word on one side whose opposite is on the other (and not on the first) is a
# different request. Each line is two sets: any word of the left against any of the right.
OPPOSITES: tuple[tuple[frozenset[str], frozenset[str]], ...] = tuple(
    (frozenset(left.split()), frozenset(right.split()))
    for left, right in (
        ("enable enabled activate turn-on switch-on on", "disable disabled deactivate turn-off switch-off off"),
        ("increase raise raising higher more bigger larger up boost extend grow",
         "decrease reduce lower less smaller down cut shrink drop"),
        ("add adding include including includes included insert attach join",
         "remove removing exclude excluding excludes excluded delete detach leave"),
        ("open opening opened", "close closing closed shut"),
        ("safe safely", "unsafe dangerous harmful risky"),
        ("allowed allow permitted permit legal lawful lawfully ok acceptable",
         "banned ban forbidden prohibited illegal unlawful restricted disallowed"),
        ("before prior pre", "after post following"),
        ("upload", "download"), ("import", "export"), ("buy buying purchase", "sell selling"),
        ("win won winner winning", "lose lost loser losing"), ("first earliest", "last latest final"),
        ("min minimum lowest least", "max maximum highest most"), ("ascending", "descending"),
        ("benefits benefit pros advantages advantage upside upsides positives",
         "drawbacks drawback cons disadvantages disadvantage downside downsides negatives risks"),
        ("lock", "unlock"), ("subscribe", "unsubscribe"), ("encrypt", "decrypt"),
        ("encode", "decode"), ("compress", "decompress"), ("zip", "unzip"), ("mount", "unmount"),
        ("install", "uninstall"), ("follow", "unfollow"), ("block", "unblock"),
        ("pause", "resume unpause"), ("start", "stop end"), ("eat", "avoid"),
        ("over above exceeding", "under below"),
        ("inside indoor indoors internal", "outside outdoor outdoors external"),
        ("input", "output"), ("push", "pull"), ("send sending sent", "receive receiving received"),
        ("credit", "debit"), ("deposit", "withdraw withdrawal"),
        ("accept accepted approve approved", "reject rejected deny denied decline declined"),
        ("best", "worst"), ("good better", "bad worse poor"), ("cheap cheaper cheapest", "expensive pricier"),
        ("hot warm", "cold cool"), ("early earlier", "late later"), ("fast faster", "slow slower"),
        ("true", "false"), ("success successful", "failure failed fail"), ("pass passed", "fail failed"),
        ("connect", "disconnect"), ("login log-in sign-in signin", "logout log-out sign-out signout"),
        ("arrive arrival arrivals", "depart departure departures leave"),
        ("uppercase upper", "lowercase lower"), ("plus", "minus"),
        ("maximize maximise", "minimize minimise"), ("expand", "collapse"),
        ("positive", "negative"), ("long longer", "short shorter"), ("old older", "new newer young younger"),
        ("valid", "invalid"), ("visible show", "hidden hide"), ("public", "private"),
        ("with", "without"), ("full", "empty"), ("right", "left"), ("north", "south"), ("east", "west"),
        ("hire", "fire"), ("lend", "borrow"), ("give", "take"), ("heat", "cool"), ("light", "dark"),
        ("inbound incoming", "outbound outgoing"), ("top", "bottom"), ("forward", "backward back"),
        ("agree", "disagree"), ("like", "dislike"),
        ("merge", "split"), ("upgrade", "downgrade"), ("overpaid", "underpaid"),
        ("outstanding excellent good", "inadequate poor bad"), ("working", "broken faulty fault"),
        ("in checkin opt-in", "out checkout opt-out"), ("high higher highest", "low lower lowest"),
        ("greater", "less smaller"), ("brief short concise", "detailed long in-depth"),
        ("urban city", "rural countryside"), ("fixed", "variable adjustable"), ("for favor favour pro", "against con"),
        ("gain gained gains gainer gainers", "loss lost losses loser losers"),
        ("wet", "dry"), ("strong", "weak"), ("rich", "poor"), ("heavy", "light"), ("thick", "thin"),
        ("wide", "narrow"), ("deep", "shallow"), ("easy", "hard difficult"), ("simple", "complex complicated"),
        ("import", "export"), ("borrow", "return"), ("remember", "forget"), ("find", "lose"),
    )
)

# Qualifier groups: co-hyponyms where one member does not answer for another ("vegan" is not
# "vegetarian", "monthly" is not "annual"). A member on one side and a different member on the
# other is a different request. A *strong* member appearing on one side only is one too ("menu"
# vs "vegan menu"); *weak* members ("may", "free", "standard") have other everyday meanings and
# only count against a different member of their group.
@dataclass(frozen=True)
class QualifierGroup:
    """Words of one kind where one member never stands in for another."""

    name: str
    members: frozenset[str]
    weak: frozenset[str] = frozenset()

    @property
    def strong(self) -> frozenset[str]:
        return self.members - self.weak


def _group(name: str, words: str, *, one_sided: bool = True) -> QualifierGroup:
    """``words`` is a space-separated list; a leading ``~`` marks a weak member."""
    members = frozenset(w.lstrip("~") for w in words.split())
    weak = members if not one_sided else frozenset(w[1:] for w in words.split() if w.startswith("~"))
    return QualifierGroup(name, members, weak)


QUALIFIER_GROUPS: tuple[QualifierGroup, ...] = (
    _group("weekday", "monday tuesday wednesday thursday friday saturday sunday weekday weekdays "
           "weekend weekends mondays tuesdays wednesdays thursdays fridays saturdays sundays"),
    _group("month", "january february ~march april ~may june july august september october "
           "november december"),
    _group("relative_day", "today tomorrow yesterday tonight same-day next-day overnight"),
    _group("time_of_day", "morning afternoon evening ~night midday noon midnight a.m p.m"),
    _group("season", "~spring summer autumn ~fall winter"),
    _group("frequency", "hourly daily weekly fortnightly monthly quarterly annual annually yearly"),
    _group("time_unit", "second seconds minute minutes hour hours day days week weeks month months "
           "year years decade decades", one_sided=False),
    _group("length_unit", "mm cm m km meter meters metre metres kilometer kilometers kilometre "
           "kilometres mile miles ft foot feet inch inches yard yards", one_sided=False),
    _group("mass_unit", "mg g kg gram grams kilogram kilograms lb lbs pound pounds oz ounce ounces "
           "stone ton tonne tons tonnes", one_sided=False),
    _group("data_unit", "kb mb gb tb pb kilobyte megabyte gigabyte terabyte", one_sided=False),
    _group("temperature_unit", "celsius fahrenheit kelvin", one_sided=False),
    _group("currency", "usd eur gbp jpy cny inr aud cad chf dollar dollars euro euros pound pounds "
           "sterling yen yuan rupee rupees $ £ € ¥", one_sided=False),
    _group("age_group", "adult adults child children kid kids baby babies infant infants toddler "
           "toddlers teen teens teenager teenagers senior seniors pensioner pensioners ~student "
           "~students minor minors elderly newborn newborns"),
    _group("gender", "men women ~man ~woman male female boys girls ~boy ~girl mens womens"),
    _group("platform", "ios android ~windows ~mac macos osx linux ubuntu debian ~web ~desktop "
           "~mobile iphone ipad chromebook"),
    _group("plan", "~free ~basic ~standard ~pro premium enterprise ~business ~personal ~family "
           "~starter ~plus ~unlimited ~trial"),
    _group("employment", "full-time part-time contractor contractors freelance freelancer "
           "self-employed ~employed ~temporary ~permanent intern interns"),
    _group("diet", "vegan vegetarian pescatarian gluten-free dairy-free halal kosher keto nut-free"),
    _group("role", "admin admins administrator administrators ~owner ~owners guest guests ~member "
           "~members landlord landlords tenant tenants employer employers "
           "employee employees buyer buyers seller sellers ~manager ~managers ~customer ~customers "
           "~visitor ~visitors ~resident ~residents ~patient ~patients ~parent ~parents ~teacher "
           "~teachers colleague colleagues"),
    _group("channel", "online in-store instore offline ~phone ~post postal in-person"),
    _group("reach", "domestic international ~local ~national abroad overseas worldwide ~regional"),
    _group("size", "~small ~medium ~large xl xxl xs ~single ~double ~king ~queen"),
    _group("meal", "breakfast brunch lunch dinner supper"),
    _group("colour", "red blue green yellow black white orange purple pink grey gray brown ~silver "
           "~gold"),
    _group("level", "beginner beginners intermediate advanced expert experts novice"),
    _group("account", "savings ~current checking joint ~sole ~business ~personal isa"),
    _group("travel_class", "economy premium-economy ~business first-class"),
    _group("luggage", "~hand carry-on cabin ~checked ~hold"),
    _group("degree", "undergraduate postgraduate ~graduate masters master's phd doctorate bachelor"),
    _group("version_word", "beta alpha ~stable nightly lts"),
    _group("env", "production prod staging ~dev development ~test ~testing ~local"),
    _group("language", "english french german spanish italian portuguese dutch chinese mandarin "
           "japanese korean arabic russian hindi welsh polish turkish"),
    _group("programming", "python java javascript typescript ~go golang rust ~ruby php kotlin "
           "~swift ~c c++ c# scala perl ~r bash powershell sql haskell elixir"),
    _group("cloud", "aws azure gcp google-cloud digitalocean heroku"),
    _group("insurance", "~home ~car ~travel ~pet ~life ~health contents ~building ~buildings"),
    _group("pet", "dog dogs puppy puppies cat cats kitten kittens rabbit rabbits"),
)

# Words written in place of others in chat ("u" for "you").
SPELLING_VARIANTS: dict[str, str] = {
    "u": "you", "ur": "your", "r": "are", "pls": "please", "plz": "please", "thx": "thanks",
    "b4": "before", "msg": "message", "acct": "account", "info": "information", "pic": "picture",
    "pics": "pictures", "tmrw": "tomorrow", "tmr": "tomorrow", "2moro": "tomorrow", "bc": "because",
    "w/": "with", "w/o": "without", "ppl": "people", "yr": "year", "yrs": "years",
}

# Markers after which the next content word fills a directional slot: "from X to Y",
# "convert X into Y", "is X older than Y", "X minus Y".
DIRECTION_MARKERS = frozenset(
    "to into onto from than towards toward minus > → via over out by with then instead".split())

# Conjunctions whose two sides may be swapped without changing the request ("TCP and UDP").
SYMMETRIC_CONJUNCTIONS = frozenset("and or & vs versus nor".split())

# Words that a request can drop or add without changing what it asks ("How long does it usually
# take" / "How long does it take"). Only consulted when the rest of the request is the same.
SOFT_WORDS = frozenset("""
usually typically normally generally currently ever exactly approximately roughly about around
best right good easiest simplest proper correct actually
""".split())


@dataclass(frozen=True)
class Lexicon:
    """Everything the rule verifier knows about words. Extend it with :meth:`extended`."""

    function_words: frozenset[str] = FUNCTION_WORDS
    phrases: dict[tuple[str, ...], str] = field(default_factory=lambda: dict(PHRASES))
    synonyms: tuple[frozenset[str], ...] = SYNONYMS
    negations: frozenset[str] = NEGATIONS
    opposites: tuple[tuple[frozenset[str], frozenset[str]], ...] = OPPOSITES
    qualifier_groups: tuple[QualifierGroup, ...] = QUALIFIER_GROUPS
    direction_markers: frozenset[str] = DIRECTION_MARKERS
    soft_words: frozenset[str] = SOFT_WORDS
    compatible_question_types: frozenset[frozenset[str]] = COMPATIBLE_QUESTION_TYPES
    symmetric_conjunctions: frozenset[str] = SYMMETRIC_CONJUNCTIONS
    spelling_variants: dict[str, str] = field(default_factory=lambda: dict(SPELLING_VARIANTS))

    def extended(
        self,
        *,
        synonyms: list[list[str]] | None = None,
        opposites: list[tuple[list[str], list[str]]] | None = None,
        qualifier_groups: dict[str, list[str]] | None = None,
    ) -> Lexicon:
        """A copy with the user's own synonym sets, opposites and qualifier groups added."""
        return Lexicon(
            function_words=self.function_words,
            phrases=self.phrases,
            synonyms=self.synonyms + tuple(frozenset(w.lower() for w in g) for g in synonyms or ()),
            negations=self.negations,
            opposites=self.opposites + tuple(
                (frozenset(w.lower() for w in a), frozenset(w.lower() for w in b))
                for a, b in opposites or ()
            ),
            qualifier_groups=self.qualifier_groups + tuple(
                _group(name, " ".join(w.lower() for w in words))
                for name, words in (qualifier_groups or {}).items()
            ),
            direction_markers=self.direction_markers,
            soft_words=self.soft_words,
            compatible_question_types=self.compatible_question_types,
            symmetric_conjunctions=self.symmetric_conjunctions,
            spelling_variants=self.spelling_variants,
        )


DEFAULT_LEXICON = Lexicon()
