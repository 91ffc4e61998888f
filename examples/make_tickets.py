"""Write examples/tickets.jsonl: 200 varied support tickets (deterministic).

Run: python examples/make_tickets.py > examples/tickets.jsonl
"""

from __future__ import annotations

import json
import random

PRODUCTS = ["Pro plan", "Team plan", "mobile app", "desktop client", "API", "dashboard", "starter kit", "router X2"]
OPENERS = ["Hi,", "Hello team,", "Hey support,", "Good morning,", "To whom it may concern,", ""]
CLOSERS = ["Thanks.", "Thank you!", "Please help.", "Regards, Sam", "Cheers", "Any update appreciated."]

TEMPLATES = {
    "billing": [
        ("Charged twice this month", "I was charged twice for my {p} subscription on my last invoice. Please refund the duplicate charge."),
        ("Refund request", "I cancelled the {p} within the trial but still got billed. I'd like a refund."),
        ("Invoice shows wrong amount", "The invoice for the {p} lists a price higher than what the pricing page said."),
        ("Update billing details", "How do I change the card used for billing on the {p}?"),
    ],
    "technical": [
        ("App crashes on startup", "Since the last update the {p} crashes right after the splash screen. Error code 0x80."),
        ("Sync error", "The {p} shows 'sync error' every few minutes and my changes are lost. This is a bug."),
        ("API returns 500", "Our integration with the {p} gets HTTP 500 errors on every POST since yesterday."),
        ("Very slow performance", "Loading the {p} takes over a minute. It used to be instant; something is broken."),
    ],
    "account": [
        ("Cannot log in", "I can't log in to my account on the {p}. The password reset email never arrives."),
        ("Locked out", "My account got locked after too many login attempts. I need access to the {p} today."),
        ("Change account email", "Please change the email on my account; I no longer have access to the old one."),
        ("Two-factor lost phone", "I lost the phone I used for two-factor login. How do I recover my account?"),
    ],
    "shipping": [
        ("Package not delivered", "My {p} order shows delivered but the package never arrived."),
        ("Where is my order", "I ordered the {p} two weeks ago and tracking hasn't moved. When will it ship?"),
        ("Damaged in delivery", "The box of my {p} was crushed in delivery and the device is damaged."),
        ("Change shipping address", "Can I change the shipping address for my {p} order before it ships?"),
    ],
    "other": [
        ("Feature suggestion", "It would be great if the {p} had a dark mode. Just a suggestion."),
        ("Partnership inquiry", "We're a small agency interested in reselling the {p}. Who should we talk to?"),
        ("Question about roadmap", "Is there a plan to support more languages in the {p}?"),
        ("Feedback", "Just wanted to say the new {p} design looks great."),
    ],
}
URGENT = ["URGENT: ", "Urgent - ", "ASAP: ", ""]


def tickets(n: int, seed: int = 42):
    """Yield n ticket rows."""
    rng = random.Random(seed)
    categories = list(TEMPLATES)
    for i in range(1, n + 1):
        category = rng.choices(categories, weights=[3, 3, 2, 2, 1])[0]
        subject, body = rng.choice(TEMPLATES[category])
        urgent = rng.random() < 0.15
        yield {
            "id": f"T-{i:05d}",
            "subject": (rng.choice(URGENT[:3]) if urgent else "") + subject,
            "body": " ".join(x for x in (rng.choice(OPENERS), body.format(p=rng.choice(PRODUCTS)),
                                         "This is blocking our whole team." if urgent else "",
                                         rng.choice(CLOSERS)) if x),
            "customer_tier": rng.choice(["free", "pro", "enterprise"]),
        }


if __name__ == "__main__":
    for row in tickets(200):
        print(json.dumps(row))
