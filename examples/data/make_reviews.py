#!/usr/bin/env python3
"""Writes reviews.tsv: the small labelled sentiment set the examples use when
no IMDB data is at hand. Written by the team: hand-written phrase banks,
combined deterministically (seed 20241125) into short movie reviews, half
positive, half negative, some with negation or contrast so that a bag of
words is not quite enough. Columns: split (train/val), label (1 positive,
0 negative), text. Run: python3 make_reviews.py > reviews.tsv
"""
import random

SUBJECTS = ["The film", "This movie", "The acting", "The plot", "The script", "The soundtrack",
            "The cast", "The ending", "The dialogue", "The director's vision", "The cinematography",
            "The pacing", "The lead actress", "The villain", "The story", "The humour", "The sequel",
            "The animation", "The editing", "The final act"]
POS_ADJ = ["wonderful", "brilliant", "moving", "gripping", "delightful", "superb", "charming",
           "beautiful", "clever", "heartfelt", "stunning", "funny", "memorable", "excellent",
           "touching", "powerful", "fresh", "inventive", "riveting", "a joy"]
NEG_ADJ = ["dull", "boring", "clumsy", "painful", "tedious", "awful", "lifeless", "predictable",
           "forgettable", "terrible", "flat", "messy", "bland", "confusing", "weak", "dreadful",
           "shallow", "irritating", "a mess", "a chore"]
POS_SENT = ["I loved every minute of it .", "I would watch it again tomorrow .",
            "Highly recommended .", "It made me laugh and cry .", "A real treat for the whole family .",
            "I left the cinema smiling .", "One of the best films of the year .",
            "Go and see it .", "It deserves every award it gets .", "I cannot wait for the next one ."]
NEG_SENT = ["I wanted my money back .", "I nearly fell asleep .", "Avoid it .",
            "What a waste of two hours .", "I walked out halfway through .",
            "One of the worst films of the year .", "Nobody should sit through this .",
            "I regret buying a ticket .", "Skip it .", "I will not watch anything by them again ."]
POS_NEG_TWIST = ["It is not bad at all .", "I expected little , but it surprised me .",
                 "Despite a slow start , it won me over .", "Not perfect , but truly enjoyable ."]
NEG_POS_TWIST = ["It is not good at all .", "I expected a lot , but it let me down .",
                 "Despite a great start , it fell apart .", "Not terrible , but truly disappointing ."]
INTENS = ["", "really ", "truly ", "quite ", "absolutely ", "so "]


def review(rng, positive):
    adj, sent, twist = (POS_ADJ, POS_SENT, POS_NEG_TWIST) if positive else (NEG_ADJ, NEG_SENT, NEG_POS_TWIST)
    parts = []
    for _ in range(rng.randint(1, 3)):
        parts.append(f"{rng.choice(SUBJECTS)} was {rng.choice(INTENS)}{rng.choice(adj)} .")
    if rng.random() < 0.4:
        parts.append(rng.choice(twist))
    if rng.random() < 0.3:
        # a contrasting remark that does not decide the review
        other = NEG_ADJ if positive else POS_ADJ
        parts.insert(rng.randint(0, len(parts)), f"Only {rng.choice(SUBJECTS).lower()} was {rng.choice(other)} .")
    parts.append(rng.choice(sent))
    return " ".join(parts)


def main():
    rng = random.Random(20241125)
    seen, rows = set(), []
    for label in (1, 0):
        texts = []
        while len(texts) < 200:  # 200 distinct reviews per class
            t = review(rng, label == 1)
            if t not in seen:
                seen.add(t)
                texts.append(t)
        # 160 train + 40 validation per class: balanced splits
        rows += [("train", label, t) for t in texts[:160]] + [("val", label, t) for t in texts[160:]]
    rng.shuffle(rows)
    for split, label, text in rows:
        print(f"{split}\t{label}\t{text}")


if __name__ == "__main__":
    main()
