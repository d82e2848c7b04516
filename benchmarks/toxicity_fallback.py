"""Precision, recall and F1 of each offline toxicity backend on a held-out set and on the sample.

    .venv/bin/python benchmarks/toxicity_fallback.py [--out benchmarks/results/toxicity_fallback.json]

Backends: `wordlist` (spark_trainer/quality/toxic_terms.tsv) and `profanity_check`
(alt-profanity-check's linear classifier), built through `toxicity.build_scorer` and judged
through `toxicity.flagged` with `quality_gates.toxicity.thresholds` from params.yaml, exactly
as the toxicity gate judges an item.

Sets:
- `held_out`: HELD_OUT_TOXIC and HELD_OUT_CLEAN below, written for this comparison only,
  independently of both the term list and the sample's planted comments (other topics, no
  names or towns). The clean half mixes plain comments with borderline ones (mild swearing,
  violent words in harmless senses, identity words in neutral sentences).
- `planted`: the sample corpus of params.yaml's `sample` section (`sample.generate`):
  planted toxic lines against every other document, and apart, against the planted clean
  controls (`borderline: true`) only.

A profanity_check threshold sweep on the held-out set is printed as well, to compare recall at
comparable precision. Deterministic: no randomness besides the sample's seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spark_trainer.data import sample
from spark_trainer.params import load_section
from spark_trainer.quality import toxicity

BACKENDS = ("wordlist", "profanity_check")

HELD_OUT_TOXIC = [
    "You're genuinely the dumbest person I've ever had the misfortune of reading.",
    "Shut your mouth, nobody wants to hear from a clueless twit like you.",
    "Get cancer and die, you miserable piece of garbage.",
    "I hope your house burns down with your whole family in it.",
    "What kind of moron writes a review like this?",
    "This author is a braindead hack who should never touch a keyboard again.",
    "Fuck you and your stupid channel.",
    "Go to hell, you worthless sack of crap.",
    "Delete your account, loser, nobody likes you.",
    "I'm going to find you after the match and beat the living daylights out of you.",
    "People like you are the reason this country is going down the toilet, you subhuman filth.",
    "Muslims are all terrorists and should be banned from entering.",
    "Women are too emotional to be engineers, go back to the kitchen.",
    "All these refugees are criminals, ship every one of them out.",
    "Black people ruin every neighbourhood they move into.",
    "Jews control the banks and the media, everyone knows it.",
    "Trans people are mentally ill freaks.",
    "Your mom should have swallowed you.",
    "Eat a dick, referee.",
    "The referee is a blind bastard who should be shot.",
    "Kill yourself, seriously, the world would be better off.",
    "I will hunt you down and make you pay for this.",
    "Keep posting and see what happens to your kids.",
    "You ugly fat cow, no wonder you're single.",
    "What a pathetic excuse for a human being.",
    "Lmao you absolute clown, imagine being this wrong.",
    "This is the shittiest restaurant in town and the owner is a crook.",
    "Screw you and the horse you rode in on.",
    "Your opinion is worth less than the dog crap on my shoe.",
    "You disgusting pervert, stay away from my daughter.",
    "Only an inbred hick would vote for that guy.",
    "Go jump off a bridge, nobody would miss you.",
    "I'd punch you in the face if I ever met you.",
    "He's a slimy little rat and deserves everything coming to him.",
    "Blow me, mods.",
    "Holy shit you are thick.",
    "Cry more, you whiny little bitch.",
    "Stop breathing, you are wasting everyone's air.",
    "Everyone from that country is a lazy thief.",
    "Fat people are disgusting and should be ashamed to go outside.",
    "Disabled people are a drain on society and should be locked away.",
    "Your wife is a whore and everyone knows it.",
    "Suck it, you pathetic nerd.",
    "Move, dumbass, you're blocking the lane.",
    "You are so ugly even your reflection looks away.",
    "What a dipshit move, learn to drive.",
    "Get your filthy hands off my car or I'll cut them off.",
    "This mayor is a corrupt scumbag who should rot in prison.",
    "Choke on it, you parasite.",
    "I hope someone runs you over on your way home.",
    "Idiots like you shouldn't be allowed to reproduce.",
    "Bunch of degenerate junkies, the lot of you.",
    "Damn snowflakes crying about everything.",
    "Your code is as useless as you are.",
    "I swear I'll slash your tyres if you park there again.",
    "Fucking hell, can you read or are you just illiterate?",
    "Nobody gives a shit about your cat, weirdo.",
    "Old hag, go die somewhere quiet.",
    "You're a coward and a liar and a disgrace to your family.",
    "Those immigrants smell and should be kept out of our schools.",
    "Christians are brainwashed sheep without a brain of their own.",
    "Bald losers like you always whine online.",
    "Piece of shit product from a piece of shit company.",
    "If you come back here I'll break your neck.",
    "Listen here you little shit, nobody talks to me like that.",
    "You absolute waste of space.",
    "Go screw yourself.",
    "Your face looks like it caught fire and someone put it out with a fork.",
    "Hope your flight crashes.",
]

HELD_OUT_CLEAN = [
    "Great video, the editing on the intro was really slick.",
    "I disagree with the author, but the argument is well made.",
    "Does anyone know when the next update comes out?",
    "The soup was a bit salty but the service was lovely.",
    "Thanks for the detailed answer, it fixed my problem.",
    "My grandmother's garden is full of tomatoes this year.",
    "The match went to extra time and both teams looked exhausted.",
    "Could you share the source for that statistic?",
    "I think the second option is cheaper in the long run.",
    "The museum opens at nine on weekdays.",
    "This killed me, funniest thing I've seen all week.",
    "The villain in that movie was terrifying.",
    "We shot the whole short film on a phone.",
    "The dog went crazy when the mail arrived.",
    "My cat is such a little monster at 4 a.m.",
    "The hard drive died, so I lost my saved games.",
    "That exam was brutal, but I think I passed.",
    "The chef's knife needs sharpening before we carve the roast.",
    "Damn, that sunset is gorgeous.",
    "The pirates in the game attack your ship at night.",
    "I'm dead tired after the night shift.",
    "This bug crashes the app whenever I rotate the screen.",
    "He was executed by the king in the third act of the play.",
    "The suspect was charged with assault and battery.",
    "Hate speech laws differ a lot between countries.",
    "The article explains why insults spread faster online.",
    "Can we stop arguing and look at the data?",
    "I respectfully think you're wrong about the tax figures.",
    "Our neighbour's rooster is loud, but we don't mind.",
    "The comedian roasted the audience and everyone loved it.",
    "My sister is a nurse and works nights.",
    "Please don't feed the ducks bread, it's bad for them.",
    "The bomb squad safely removed the old shell from the field.",
    "That goalkeeper is a beast.",
    "I'm so stupidly happy about the new puppy.",
    "The rapper's new album drops on Friday.",
    "Sweet potato fries are underrated.",
    "It was a hell of a game.",
    "Crap, I forgot my umbrella again.",
    "Our bitch had six puppies last night, all healthy.",
    "Dick Francis wrote many mystery novels about horse racing.",
    "The knitting club meets every Thursday at the library.",
    "The new bridge cuts the commute by twenty minutes.",
    "Kids these days are so good with computers.",
    "I voted for the other candidate, but congratulations to the winner.",
    "Nice try, but the puzzle has a simpler solution.",
    "Turn left at the church and the bakery is on your right.",
    "Honest feedback: the second half of the book drags.",
    "The storm destroyed several barns in the valley.",
    "We lost the game, but the kids had fun.",
    "Vaccines are free at the pharmacy this week.",
    "The immigration office is closed on public holidays.",
    "Attendance at women's football matches has doubled in five years.",
    "The mosque and the church organised a joint food drive.",
    "Gay marriage was legalised there in 2015.",
    "The elderly residents enjoyed the concert in the park.",
    "My code finally compiles, time for coffee.",
    "The hunter shot a deer and shared the meat with the village.",
    "Black coffee with no sugar, please.",
    "That horror movie scared the life out of me.",
    "Could the moderators pin the rules thread?",
    "The fox got into the henhouse again.",
    "I love how passionate this community is.",
    "Ugh, Mondays are the worst.",
    "The death toll in that war documentary was sobering.",
    "The firefighters saved everyone in the building.",
    "Sorry for the late reply, I was travelling.",
]


def scores(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def measure(scorer: toxicity.ToxicityScorer, thresholds: dict[str, float], toxic: list[str],
            clean: list[str]) -> dict:
    """Precision/recall/F1 of the gate's decision (any category at its threshold) on toxic vs clean."""
    flags = [bool(toxicity.flagged(s, thresholds)) for s in scorer.score(toxic + clean)]
    tp = sum(flags[:len(toxic)])
    fp = sum(flags[len(toxic):])
    return scores(tp, fp, len(toxic) - tp)


def sample_data(params_path: Path) -> sample.SampleData:
    s = load_section("sample", params_path)
    return sample.generate(s.seed, s.subjects, s.qa_per_subject, s.world_towns, s.fact_phrasings,
                           s.passages_per_subject, s.mmlu_dev_per_subject, s.mmlu_test_per_subject,
                           s.planted.model_dump())


def planted_sets(data: sample.SampleData) -> dict[str, tuple[list[str], list[str]]]:
    """(toxic, clean) texts of the sample: toxic lines vs all other documents, and vs the clean controls."""
    labels = {lab["id"]: lab for lab in data.labels}
    toxic = [d["text"] for d in data.corpus if labels.get(d["id"], {}).get("toxic")]
    others = [d["text"] for d in data.corpus if not labels.get(d["id"], {}).get("toxic")]
    controls = [d["text"] for d in data.corpus if labels.get(d["id"], {}).get("borderline")]
    return {"planted_vs_corpus": (toxic, others), "planted_vs_controls": (toxic, controls)}


def run(params_path: Path) -> dict:
    thresholds = load_section("quality_gates", params_path).toxicity.thresholds
    data = sample_data(params_path)
    sets = {"held_out": (HELD_OUT_TOXIC, HELD_OUT_CLEAN), **planted_sets(data)}
    by_category: dict[str, list[str]] = {}
    texts = {d["id"]: d["text"] for d in data.corpus}
    for lab in data.labels:
        if lab.get("toxic"):
            by_category.setdefault(lab["category"], []).append(texts[lab["id"]])
    report: dict = {"thresholds": thresholds, "sizes": {k: {"toxic": len(t), "clean": len(c)}
                                                        for k, (t, c) in sets.items()},
                    "results": {}, "planted_recall_by_category": {}}
    for backend in BACKENDS:
        scorer = toxicity.build_scorer(backend, "original", "", "", "error", 32)
        report["results"][backend] = {name: measure(scorer, thresholds, t, c) for name, (t, c) in sets.items()}
        report["planted_recall_by_category"][backend] = {
            c: f"{measure(scorer, thresholds, t, [])['tp']}/{len(t)}" for c, t in sorted(by_category.items())}
    pc = toxicity.build_scorer("profanity_check", "original", "", "", "error", 32)
    report["profanity_check_sweep_held_out"] = {
        str(th): measure(pc, {"toxicity": th}, HELD_OUT_TOXIC, HELD_OUT_CLEAN) for th in (0.2, 0.3, 0.4, 0.5, 0.7)}
    return report


def fmt(v: float | None) -> str:
    return "   -" if v is None else f"{v:.3f}"


def print_report(report: dict) -> None:
    print(f"thresholds: {report['thresholds']}")
    print(f"sizes: {report['sizes']}\n")
    print(f"{'backend':<16} {'set':<20} {'precision':>9} {'recall':>7} {'f1':>6} {'tp':>4} {'fp':>4} {'fn':>4}")
    for backend, per_set in report["results"].items():
        for name, m in per_set.items():
            print(f"{backend:<16} {name:<20} {fmt(m['precision']):>9} {fmt(m['recall']):>7} {fmt(m['f1']):>6} "
                  f"{m['tp']:>4} {m['fp']:>4} {m['fn']:>4}")
    print("\nplanted recall by category:")
    for backend, per_category in report["planted_recall_by_category"].items():
        print(f"  {backend:<16} " + "  ".join(f"{c} {v}" for c, v in per_category.items()))
    print("\nprofanity_check threshold sweep (held_out):")
    for th, m in report["profanity_check_sweep_held_out"].items():
        print(f"  toxicity >= {th:<4} precision {fmt(m['precision'])} recall {fmt(m['recall'])} f1 {fmt(m['f1'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args()
    report = run(args.params)
    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
