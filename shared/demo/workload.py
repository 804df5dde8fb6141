"""The demo's workload: a support and logistics team of agents working through customer tickets.

:func:`generate` builds it from a seed, reproducibly. Six agents share every ticket:

* **triage** classifies the customer's message (JSON output): category and urgency. It reads the
  whole message, tone included ("URGENT: ... I need an answer today" is urgent, the same question
  with "Thanks in advance" is not), which the cache's verifier does not judge (it asks whether the
  same *question* is asked), so triage asks thrifty to reuse an answer only for the identical
  message (``metadata.thrifty.exact_only``), as an agent that classifies or extracts from whole
  messages should;
* **tracking** looks up the order the ticket is about (with a ``lookup_order`` tool), and in the
  same millisecond the **reply** agent and, for half the tickets, the **summariser** make the same
  lookup (the same prompt, the same tool): identical calls in flight at once;
* **research** answers the customer's questions: a skewed distribution over a catalogue of
  intents (most tickets ask the few common things), each asked in several wordings, and now and
  then a question that reads like an FAQ but needs reasoning (a hard task);
* **fact_checker** checks a claim against the policy or works out a landed cost: hard tasks; now
  and then a whole contract is pasted in for review (a runaway prompt a budget should stop). It
  sets no ``max_tokens`` (it leaves the length of its reasoning to the model), so a budget must
  assume the model's whole output limit for it unless an output cap says otherwise;
* **summariser** writes the hand-over note of the ticket: unique text, never reusable;
* **reply** drafts the answer to the customer (personal: it carries the customer's e-mail and
  is scoped to them), sometimes over two turns ("make it shorter"); for about one ticket in ten the
  customer stays on the live chat with it, 6 to 12 turns, each call resending the whole
  conversation so far (what history compaction is for).

The research, fact-checking and reply agents carry the policy handbook in their system prompts
(about 1,300 tokens, the same in every call), as agents that answer from a handbook do: the
prefix a provider's prompt cache reads back.

The same wording of an intent recurs across tickets (exact repeats), other wordings say the same
thing (paraphrases), and near duplicates differ in what matters (another order number, another
city, the opposite action, another product or plan, another channel): each request carries the
identity of its true answer, so a served answer whose identity differs is a wrong answer. Each
also carries its difficulty: a hard task answered by a cheap model fails.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Difficulty = Literal["easy", "hard"]

AGENTS = ("triage", "tracking", "research", "fact_checker", "summariser", "reply")
SYSTEM_PROMPTS: dict[str, str] = {
    "triage": "You are the triage agent of Northwind Outfitters' support desk. Classify each customer message "
              "into exactly one category (shipping, billing, account, product, returns) and an urgency "
              "(low, normal, high). Answer in JSON with the keys category and urgency.",
    "tracking": "You are the tracking agent of Northwind Outfitters. You answer questions about orders and "
                "shipments using the lookup_order tool and the carrier's data. Be precise about dates.",
    "research": "You are the research agent of Northwind Outfitters' support desk. Answer customer questions "
                "from the policy handbook (shipping, returns, payments, warranties, accounts, plans). Quote "
                "the rule that applies and keep it under 120 words.",
    "fact_checker": "You are the fact-checking agent of Northwind Outfitters. Check claims and calculations "
                    "against the policy handbook and the tariff tables. Show your reasoning step by step.",
    "summariser": "You are the summariser of Northwind Outfitters' support desk. Write hand-over notes for the "
                  "next shift: what the customer wants, what was found, what is left to do.",
    "reply": "You are the customer reply agent of Northwind Outfitters. Write warm, short, accurate replies "
             "signed 'The Northwind team'. Never promise what the policy does not allow.",
}
# what each agent tags its calls with (metadata.task): the agent's role, not the task's hidden difficulty
AGENT_TASKS = {"triage": "classify", "tracking": "lookup", "research": "qa", "fact_checker": "analysis",
               "summariser": "summarize", "reply": "writing"}
LOOKUP_TOOL = {"type": "function", "function": {
    "name": "lookup_order", "description": "Look up an order's shipments and carrier events.",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}}}


def _tool(name: str, description: str, **properties: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {k: {"type": "string", "description": v}
                                                        for k, v in properties.items()},
                       "required": list(properties)}}}


# the support desk's tool belt: the agents that look things up send all of it with every call
TOOLS = [
    LOOKUP_TOOL,
    _tool("refund_order", "Refund an order in full or in part to the original payment method.",
          order="the order number", amount="the amount to refund, in dollars", reason="why, for the audit log"),
    _tool("create_return_label", "Create a prepaid return label for items of an order.",
          order="the order number", items="the items going back, comma separated"),
    _tool("update_shipping_address", "Change the delivery address of an order that has not shipped yet.",
          order="the order number", address="the new address, one line"),
    _tool("lookup_customer", "Find a customer's account, orders and membership from an e-mail address.",
          email="the customer's e-mail address"),
    _tool("check_stock", "Stock of a product at the warehouse and at each store.",
          product="the product name", city="a store's city, or empty for all"),
    _tool("open_warranty_claim", "Open a warranty claim for a defective product, with photos.",
          order="the order number", product="the product", defect="what is wrong with it"),
    _tool("escalate_to_human", "Hand the ticket to a human agent with a note.",
          ticket="the ticket number", note="what the human should know"),
]

CITIES = ("Denver", "Boston", "Seattle", "Austin", "Chicago", "Portland", "Atlanta", "Phoenix")
PRODUCTS = ("Trailblazer 2 tent", "Summit 45 backpack", "Glacier down jacket", "Ridge trekking poles",
            "Canyon hydration pack", "Alpine sleeping bag")
PAYMENTS = ("PayPal", "Klarna", "Apple Pay", "a bank transfer")
DAYS = ("Saturday", "Sunday", "public holidays")
PLANS = ("Explorer", "Pro")
COUNTRIES = ("Vietnam", "Portugal", "Mexico", "Canada")
FIRST = ("Ana", "Ben", "Chloe", "Dev", "Elif", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena", "Mo", "Nia")
LAST = ("Garcia", "Okafor", "Novak", "Lindqvist", "Tanaka", "Moreau", "Schmidt", "Rossi", "Haddad", "Kim")


def _handbook_rules() -> list[str]:
    """The rules of Northwind's policy handbook."""
    rules = [
        "Orders placed before 2 pm ship the same business day; later orders ship the next business day.",
        "Standard shipping takes 3 to 5 business days, express 1 to 2, and there is no delivery on "
        + ", ".join(DAYS) + ".",
        "Shipping is free on orders over $75 within the continental United States.",
        "Returns are accepted within 30 days of delivery for unused items in their original packaging.",
        "Worn or used items may be returned only under the warranty, never as a change of mind.",
        "Refunds go back to the original payment method within 5 business days of the return scan.",
        "Exchanges ship free once the original item is scanned by the carrier.",
        "Gift cards, final-sale items and custom-fitted items cannot be returned.",
        "Customers can pay by card, " + ", ".join(PAYMENTS) + "; Klarna splits a purchase into four payments.",
        "A failed payment holds the order for 48 hours, then cancels it.",
        "Price adjustments are honoured within 14 days of purchase, once per order.",
        "Accounts can be closed at any time; order history is kept for 7 years for tax purposes.",
        "Passwords are reset from the sign-in page; support never asks for a password.",
        "Two-factor authentication can be turned on under account settings.",
    ]
    for plan, (price, discount) in zip(PLANS, (("$49 a year", 10), ("$99 a year", 20)), strict=True):
        rules.append(f"The {plan} membership costs {price}, takes {discount}% off full-price gear and includes "
                     "free express shipping; it renews every year unless cancelled 7 days before.")
    for product, years in zip(PRODUCTS, (2, 3, 5, 2, 1, 3), strict=True):
        rules.append(f"The {product} carries a {years}-year warranty against manufacturing defects; damage from "
                     "misuse, accidents or normal wear is not covered, and a claim needs the order number and "
                     "photos of the defect.")
    for city, days in zip(CITIES, (2, 3, 4, 2, 2, 4, 3, 3), strict=True):
        rules.append(f"Store pickup in {city} is ready in {days} business days; items wait 10 days at the store "
                     "before they are returned to the warehouse.")
    for country, (duty, days) in zip(COUNTRIES, (("10%", 12), ("6%", 8), ("16%", 10), ("5%", 6)), strict=True):
        rules.append(f"Orders to {country} ship by international courier in about {days} business days; import "
                     f"duties of about {duty} are collected on delivery and are not refundable.")
    rules += [
        "Lost parcels are replaced once the carrier confirms the loss, usually within 5 business days.",
        "Damaged deliveries must be reported within 48 hours with photos of the parcel and the item.",
        "Orders can be changed or cancelled until they are packed, usually within an hour of purchase.",
        "The carrier's liability ends at delivery to the address given; a signature is required over $500.",
        "Support answers by chat from 8 am to 8 pm Mountain Time, and by e-mail within one business day.",
    ]
    return rules


HANDBOOK_RULES = tuple(_handbook_rules())
# which the research, fact-checking and reply agents carry in their system prompts (about 1,300
# tokens, the same in every call: the prefix a provider's prompt cache reads back)
HANDBOOK = "Policy handbook (quote the rule that applies):\n" + "\n".join(
    f"{n}. {rule}" for n, rule in enumerate(HANDBOOK_RULES, 1))
for _agent in ("research", "fact_checker", "reply"):
    SYSTEM_PROMPTS[_agent] += "\n\n" + HANDBOOK


@dataclass(frozen=True)
class Intent:
    """A question customers ask, in several wordings, with slots that change the answer.

    ``wordings`` are format strings over ``slots``; every wording of one slot assignment has the
    same answer, and each assignment is its own identity."""

    name: str
    category: str
    wordings: tuple[str, ...]
    slots: Mapping[str, Sequence[str]] = field(default_factory=dict)
    difficulty: Difficulty = "easy"
    answer_tokens: int = 160


# Paired intents (enable/disable, standard/express, online/in-store, month/year) are near duplicates
# of one another that must never share an answer.
FAQ: tuple[Intent, ...] = (
    Intent("return_policy", "returns", (
        "What is your return policy for {channel}?", "What's the returns policy for {channel}?",
        "How do returns work for {channel}?", "Can you explain the return policy for {channel}?"),
        {"channel": ("online orders", "in-store purchases")}),
    Intent("shipping_time", "shipping", (
        "How long does {speed} shipping to {city} take?", "What's the delivery time for {speed} shipping to {city}?",
        "How many days does {speed} delivery to {city} take?", "How long will {speed} shipping to {city} take?"),
        {"speed": ("standard", "express"), "city": CITIES}),
    Intent("enable_2fa", "account", (
        "How do I enable two-factor authentication?", "How do I turn on two-factor authentication?",
        "How can I set up two-factor authentication on my account?", "How do I activate two-factor authentication?")),
    Intent("disable_2fa", "account", (
        "How do I disable two-factor authentication?", "How do I turn off two-factor authentication?",
        "How can I remove two-factor authentication from my account?",
        "How do I deactivate two-factor authentication?")),
    Intent("payment_method", "billing", (
        "Can I pay with {method}?", "Do you accept {method}?", "Is {method} accepted as a payment method?",
        "Can I use {method} to pay for my order?"),
        {"method": PAYMENTS}),
    Intent("opening_hours", "product", (
        "What are your store opening hours on {day}?", "When is your store open on {day}?",
        "What are the store hours on {day}?"),
        {"day": DAYS}),
    Intent("warranty", "product", (
        "How long is the warranty on the {product}?", "What warranty does the {product} come with?",
        "What is the warranty period for the {product}?"),
        {"product": PRODUCTS}),
    Intent("refund_time", "billing", (
        "How long do refunds take to process?", "How long does it take to get a refund?",
        "How many days until a refund is processed?")),
    Intent("reset_password", "account", (
        "How do I reset my password?", "How can I reset my password?", "What are the steps to reset my password?",
        "I forgot my password, how do I reset it?")),
    Intent("plan_price", "billing", (
        "How much does the {plan} plan cost per {period}?", "What is the price of the {plan} plan per {period}?",
        "What does the {plan} plan cost per {period}?"),
        {"plan": PLANS, "period": ("month", "year")}),
    Intent("change_address", "shipping", (
        "Can I change the delivery address after my order has shipped?",
        "Is it possible to change the shipping address once the order has shipped?",
        "Can the delivery address be changed after shipping?")),
    Intent("size_exchange", "returns", (
        "Can I exchange the {product} for a different size?", "Is it possible to swap the {product} for another size?",
        "How do I exchange the {product} for a different size?"),
        {"product": PRODUCTS}),
)
# Questions that read like FAQs but need reasoning: the router's rules may send them to the cheap
# tier, whose answer fails, and escalation has to catch it.
TRICKY: tuple[Intent, ...] = (
    Intent("gift_price_drop", "returns", (
        "If a gift bought with a {code} discount code is returned after a price drop, is the refund the price "
        "paid or the current price?",), {"code": ("10%", "20%", "student")}, "hard", 220),
    Intent("split_shipment_fee", "shipping", (
        "When one order ships in {parts} parcels and one is lost, which shipping fee is refunded?",),
        {"parts": ("two", "three")}, "hard", 200),
)
ORDER_STATUS = ("What's the status of order {order}?", "Can you check the status of order {order}?",
                "Where is order {order} right now?")
HARD: tuple[Intent, ...] = (
    Intent("landed_cost", "billing", (
        "Work out step by step the landed cost of importing {units} units of the {product} from {country}, "
        "including duties, freight and VAT, and compare it with buying locally.",),
        {"units": ("50", "200", "1000"), "product": PRODUCTS, "country": COUNTRIES}, "hard", 420),
    Intent("policy_claim", "returns", (
        "A customer says our policy lets them return a used {product} after 90 days for a full refund because "
        "it was a gift. Analyze step by step whether the handbook supports this claim and cite the rules.",),
        {"product": PRODUCTS}, "hard", 380),
    Intent("carrier_dispute", "shipping", (
        "Compare the two carriers' tracking events for order {order} and explain why the delivery date "
        "moved; decide who is liable under our shipping contract.",),
        {}, "hard", 400),
)
TICKET_OPENERS = (
    "Hi, {question}", "Hello! {question} Thanks in advance.", "{question}", "Quick question: {question}",
    "Good morning, {question} Regards, {name}", "URGENT: {question} I need an answer today.",
)
DIGEST_CHARS = 16
CHAT_SHARE = 0.1  # of tickets whose customer stays on the live chat
CHAT_FOLLOW_UPS = (
    "Can order {order} still be changed?", "How long would express shipping to {city} take?",
    "Is the {product} covered if the zip breaks?", "Could I return the {product} if it doesn't fit?",
    "Do you accept {method}?", "What if the parcel arrives damaged?", "Can I pick it up in {city} instead?",
    "Would I pay import duties on a gift to {country}?", "When will the refund show up on my card?",
    "Do you deliver on {day}?", "Can I add a second {product} to the order?", "Thanks! And the warranty on the "
    "{product}?", "Can you send me a return label?", "Is there a discount with the Explorer membership?",
)


@dataclass(frozen=True)
class DemoCall:
    """One request an agent makes, with the truth about it.

    ``identity`` names the true answer: two requests with the same identity share an answer,
    with different identities they must not. ``difficulty`` says whether a cheap model can answer."""

    agent: str
    messages: tuple[Mapping[str, Any], ...]
    identity: str
    difficulty: Difficulty
    answer_tokens: int
    ticket: int
    user: str | None = None
    json_output: bool = False
    tools: bool = False
    max_tokens: int | None = 700  # None: the agent leaves the answer's length to the model
    exact_only: bool = False

    def request(self, model: str, *, workflow: str = "support-desk") -> dict[str, Any]:
        """The OpenAI-style request an agent sends for this call."""
        request: dict[str, Any] = {
            "model": model, "messages": [dict(m) for m in self.messages],
            "metadata": {"agent": self.agent, "workflow_id": workflow, "task": AGENT_TASKS[self.agent],
                         "ticket": self.ticket},
        }
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if self.exact_only:
            request["metadata"]["thrifty"] = {"exact_only": True}
        if self.user:
            request["user"] = self.user
        if self.json_output:
            request["response_format"] = {"type": "json_object"}
        if self.tools:
            request["tools"] = TOOLS
        return request

    @property
    def digest(self) -> str:
        return messages_digest(self.messages)


def messages_digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """A short stable digest of a message list (the stand-in world's key for a request)."""
    data = json.dumps([{"role": m.get("role"), "content": m.get("content")} for m in messages], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class Ticket:
    """One customer ticket: its calls in waves; the calls of a wave are made at the same moment."""

    number: int
    waves: tuple[tuple[DemoCall, ...], ...]

    def calls(self) -> Iterator[DemoCall]:
        for wave in self.waves:
            yield from wave


@dataclass(frozen=True)
class Workload:
    seed: int
    tickets: tuple[Ticket, ...]

    def calls(self) -> Iterator[DemoCall]:
        for ticket in self.tickets:
            yield from ticket.calls()

    def __len__(self) -> int:
        return sum(1 for _ in self.calls())


class _Ticketer:
    """Draws tickets. Intents follow a Zipf-like distribution; orders and customers recur."""

    def __init__(self, seed: int, triage_by_meaning: bool) -> None:
        self.rng = random.Random(seed)
        # the live chats draw from their own stream, so that adding them left every other draw as it was
        self.chat_rng = random.Random(f"chat-{seed}")
        self.triage_by_meaning = triage_by_meaning
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(FAQ))]
        self.faq_order = list(FAQ)
        self.rng.shuffle(self.faq_order)
        self.faq_weights = weights
        self.orders = [str(self.rng.randint(40_000, 49_999)) for _ in range(60)]
        self.customers = [(f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}", f"c-{1000 + i}") for i in range(80)]

    def wording(self, intent: Intent) -> str:
        # people tend to use the same few wordings: the first one of an intent's list is the commonest
        weights = [1.0 / (k + 1) ** 1.3 for k in range(len(intent.wordings))]
        return self.rng.choices(intent.wordings, weights)[0]

    def faq(self) -> tuple[Intent, dict[str, str]]:
        intent = self.rng.choices(self.faq_order, self.faq_weights)[0]
        values = {slot: self.rng.choices(options, [1.0 / (k + 1) for k in range(len(options))])[0]
                  for slot, options in intent.slots.items()}
        return intent, values

    def order(self) -> str:
        return self.rng.choices(self.orders, [1.0 / (k + 1) ** 0.8 for k in range(len(self.orders))])[0]


def _identity(intent: Intent, values: Mapping[str, str]) -> str:
    return intent.name + "".join(f"|{k}={values[k]}" for k in sorted(values))


def _user(agent: str, text: str, history: Sequence[Mapping[str, Any]] = ()) -> tuple[Mapping[str, Any], ...]:
    return ({"role": "system", "content": SYSTEM_PROMPTS[agent]}, *history, {"role": "user", "content": text})


def _ticket(number: int, draw: _Ticketer) -> Ticket:
    rng = draw.rng
    name, user = rng.choice(draw.customers)
    email = f"{name.split()[0].lower()}.{name.split()[1].lower()}@example.com"
    order = draw.order()
    intent, values = draw.faq()
    question = draw.wording(intent).format(**values)
    message = rng.choice(TICKET_OPENERS).format(question=question, name=name.split()[0])
    if rng.random() < 0.5:
        message += f" My order number is {order}."
    waves: list[tuple[DemoCall, ...]] = []

    # 1. triage: the customer's message, classified. The answer is the category and urgency.
    urgent = "high" if message.startswith("URGENT") else "normal"
    waves.append((DemoCall("triage", _user("triage", f"Customer message: {message}"),
                           f"triage|{intent.category}|{urgent}", "easy", 40, number, json_output=True,
                           max_tokens=100, exact_only=not draw.triage_by_meaning),))

    # 2. the order's status, asked by several agents at the same moment (identical calls in flight)
    status_text = draw.wording(Intent("order_status", "shipping", ORDER_STATUS)).format(order=order)
    status = DemoCall("tracking", _user("tracking", status_text), f"order_status|{order}", "easy", 120, number,
                      tools=True, max_tokens=300)
    others = ("reply", "summariser") if rng.random() < 0.5 else ("reply",)
    waves.append((status, *(DemoCall(agent, status.messages, status.identity, "easy", 120, number, tools=True,
                                     max_tokens=300) for agent in others)))

    # 3. research: the customer's question, and often one or two more from the catalogue
    asked = [(intent, values, question)]
    for _ in range(rng.choice((0, 1, 1, 2))):
        more, more_values = draw.faq()
        asked.append((more, more_values, draw.wording(more).format(**more_values)))
    if rng.random() < 0.12:
        tricky = rng.choice(TRICKY)
        tricky_values = {slot: rng.choice(options) for slot, options in tricky.slots.items()}
        asked.append((tricky, tricky_values, tricky.wordings[0].format(**tricky_values)))
    waves.append(tuple(DemoCall("research", _user("research", text), _identity(i, v), i.difficulty,
                                i.answer_tokens, number) for i, v, text in asked))

    # 4. a hard task for some tickets
    if rng.random() < 0.22:
        hard = rng.choice(HARD)
        hard_values = {slot: rng.choice(options) for slot, options in hard.slots.items()}
        if "{order}" in hard.wordings[0]:
            hard_values["order"] = order
        text = hard.wordings[0].format(**hard_values)
        waves.append((DemoCall("fact_checker", _user("fact_checker", text), _identity(hard, hard_values), "hard",
                               hard.answer_tokens, number, max_tokens=None),))

    # a runaway: now and then a whole contract pasted in for review (thousands of tokens on the
    # premium model: what a per-request budget is for)
    if rng.random() < 0.04:
        text = ("Analyze step by step whether this supplier contract lets us charge the customer for return "
                f"shipping on ticket {number}, and list every clause that applies:\n\n" + _contract(rng))
        waves.append((DemoCall("fact_checker", _user("fact_checker", text), f"contract_review|{number}", "hard",
                               600, number, max_tokens=None),))

    # 5. the hand-over note: unique to the ticket
    note = (f"Ticket {number} from {name}: {message} Order {order}: in transit. Questions answered: "
            + "; ".join(text for _, _, text in asked) + ". Write the hand-over note.")
    waves.append((DemoCall("summariser", _user("summariser", note), f"summary|{number}", "easy", 150, number,
                           max_tokens=400),))

    # 6. the reply to the customer: personal (their e-mail), sometimes a second turn
    draft = (f"Draft a reply to {name} <{email}> about ticket {number}. They asked: {question} "
             f"Their order {order} is in transit.")
    first = DemoCall("reply", _user("reply", draft), f"reply|{number}", "easy", 180, number, user=user)
    waves.append((first,))
    if rng.random() < 0.3:
        history = ({"role": "user", "content": draft},
                   {"role": "assistant", "content": f"Dear {name.split()[0]}, thank you for your message ..."})
        shorter = DemoCall("reply", _user("reply", "Make it shorter and friendlier.", history),
                           f"reply_short|{number}", "easy", 90, number, user=user)
        waves.append((shorter,))

    # 7. now and then the customer stays on the live chat with the reply agent: a long conversation,
    # every turn resent with the whole history so far
    if draw.chat_rng.random() < CHAT_SHARE:
        waves.extend((call,) for call in _chat(number, name, email, user, order, message, draw))
    return Ticket(number, tuple(waves))


def _chat(number: int, name: str, email: str, user: str, order: str, message: str,
          draw: _Ticketer) -> Iterator[DemoCall]:
    """A live chat of 6 to 12 customer turns with the reply agent, each call carrying the
    conversation so far (the agent's earlier answers quote the handbook, 80 to 150 tokens each)."""
    rng = draw.chat_rng
    first = name.split()[0]
    history: list[Mapping[str, Any]] = []
    asked = f"Live chat with {name} <{email}> about ticket {number}. Customer: {message}"
    for turn in range(1, rng.randint(6, 12) + 1):
        yield DemoCall("reply", _user("reply", asked, history), f"chat|{number}|{turn}", "easy", 110, number,
                       user=user, max_tokens=400)
        rules = " ".join(rng.sample(HANDBOOK_RULES, rng.randint(2, 4)))
        said = f"Thanks, {first}. About order {order}: {rules} Is there anything else I can help with?"
        history += [{"role": "user", "content": asked}, {"role": "assistant", "content": said}]
        asked = "Customer: " + rng.choice(CHAT_FOLLOW_UPS).format(
            order=order, city=rng.choice(CITIES), product=rng.choice(PRODUCTS), method=rng.choice(PAYMENTS),
            country=rng.choice(COUNTRIES), day=rng.choice(DAYS))


def _contract(rng: random.Random, clauses: int = 140) -> str:
    """A long supplier contract, different each time (about 7,000 tokens)."""
    subjects = ("returns", "freight", "damaged goods", "customs duties", "late delivery", "warranty claims",
                "packaging", "insurance", "invoicing", "force majeure")
    parties = ("the Supplier", "the Buyer", "the Carrier", "the Customer")
    return "\n".join(
        f"Clause {k}. Regarding {rng.choice(subjects)}, {rng.choice(parties)} shall bear the cost within "
        f"{rng.randint(5, 90)} days of notice, unless {rng.choice(parties)} has agreed otherwise in writing "
        f"under clause {rng.randint(1, clauses)}; amounts above {rng.randint(2, 50) * 100} EUR need approval."
        for k in range(1, clauses + 1))


def generate(requests: int = 600, seed: int = 7, *, triage_by_meaning: bool = False) -> Workload:
    """Tickets until the workload holds at least ``requests`` calls (about seven per ticket).
    ``triage_by_meaning``: triage lets thrifty match its messages by meaning (see the module
    docstring; the ground truth is the same, so wrong reuses are counted)."""
    if requests < 1:
        raise ValueError("requests must be at least 1")
    draw = _Ticketer(seed, triage_by_meaning)
    tickets: list[Ticket] = []
    total = 0
    while total < requests:
        ticket = _ticket(1001 + len(tickets), draw)
        tickets.append(ticket)
        total += sum(len(wave) for wave in ticket.waves)
    workload = Workload(seed, tuple(tickets))
    check_identities(workload.calls())
    return workload


def check_identities(calls: Iterator[DemoCall] | Sequence[DemoCall]) -> None:
    """Raise ValueError if two calls with the same messages have different identities (the ground
    truth would contradict itself)."""
    seen: dict[str, str] = {}
    for call in calls:
        known = seen.setdefault(call.digest, call.identity)
        if known != call.identity:
            raise ValueError(f"one request text, two identities: {known} and {call.identity}")
