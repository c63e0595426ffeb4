"""Built-in demo dataset: pull four fields out of a sentence into exact JSON.

    "Maria Lopez, 34, moved to Lisbon in 2019 and works as a nurse."
    -> {"name": "Maria Lopez", "age": 34, "city": "Lisbon", "job": "nurse"}

The small base model answers in prose, adds keys, quotes the age or wraps the JSON in a code fence; a few
minutes of LoRA teach it the exact format. Examples are short (about 60 tokens with the chat template) so
training is quick on a CPU. Generation is deterministic (seeded); the held-out ``test`` split uses sentences
built the same way but is never trained on, for measuring exact-match accuracy.

    python -m finetune.demo --out DIR [--n-train 240 --n-test 60 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION = "Extract the name, age, city and job from this sentence as JSON."
FIRST = ["Maria", "James", "Aisha", "Kenji", "Olga", "Pedro", "Fatima", "Liam", "Chen", "Sofia", "Noah", "Amara",
         "Lucas", "Ingrid", "Ravi", "Elena", "Tomas", "Yuki", "Omar", "Clara", "Hugo", "Priya", "Mateo", "Leila",
         "Finn", "Zara", "Diego", "Hana", "Ivan", "Nora", "Samuel", "Mei", "Jonas", "Lucia", "Arjun", "Emma"]
LAST = ["Lopez", "Smith", "Khan", "Tanaka", "Petrova", "Silva", "Haddad", "Murphy", "Wang", "Rossi", "Brown",
        "Okafor", "Martin", "Larsen", "Patel", "Novak", "Berg", "Sato", "Farouk", "Weber", "Dubois", "Singh",
        "Garcia", "Nasser", "Kelly", "Ahmed", "Torres", "Kim", "Ivanov", "Meyer", "Cohen", "Li", "Schmidt",
        "Moreno", "Das", "Wilson"]
CITIES = ["Lisbon", "Paris", "Berlin", "Tokyo", "Nairobi", "Toronto", "Madrid", "Oslo", "Cairo", "Lima", "Dublin",
          "Seoul", "Vienna", "Prague", "Boston", "Sydney", "Mumbai", "Lagos", "Austin", "Denver", "Milan",
          "Athens", "Quito", "Hanoi", "Zurich", "Warsaw", "Chicago", "Kyoto", "Bogota", "Helsinki"]
JOBS = ["nurse", "teacher", "engineer", "architect", "baker", "pilot", "chef", "lawyer", "dentist", "plumber",
        "journalist", "electrician", "pharmacist", "librarian", "accountant", "photographer", "farmer",
        "mechanic", "carpenter", "designer", "software developer", "bus driver", "police officer", "data analyst",
        "translator", "veterinarian", "firefighter", "musician", "gardener", "tailor"]
TEMPLATES = [
    "{name}, {age}, moved to {city} in {year} and works as {a_job}.",
    "{name} is {a_age}-year-old {job} living in {city}.",
    "Meet {name}: {age} years old, {job}, based in {city}.",
    "At {age}, {name} works as {a_job} in {city}.",
    "{name} ({age}) is {a_job} from {city}.",
    "Our new {job}, {name}, is {age} and lives in {city}.",
    "{name} lives in {city}, is {age} years old and works as {a_job}.",
    "In {city}, {name} has been {a_job} since {year}; {name_first} is {age} now.",
]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _an_age(age: int) -> str:
    return ("an " if str(age)[0] == "8" or age in (11, 18) else "a ") + str(age)


@dataclass
class DemoExample:
    sentence: str
    fields: dict

    def to_alpaca(self) -> dict:
        return {"instruction": INSTRUCTION, "input": self.sentence, "output": json.dumps(self.fields)}


def make_examples(n: int, seed: int = 0) -> list[DemoExample]:
    """``n`` distinct examples; the same seed always gives the same list."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[DemoExample] = []
    while len(out) < n:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name, age, city, job = f"{first} {last}", rng.randint(19, 78), rng.choice(CITIES), rng.choice(JOBS)
        tmpl = rng.choice(TEMPLATES)
        s = tmpl.format(name=name, name_first=first, age=age, a_age=_an_age(age), city=city, job=job,
                        a_job=_a(job), year=rng.randint(2005, 2023))
        if s in seen:
            continue
        seen.add(s)
        out.append(DemoExample(s, {"name": name, "age": age, "city": city, "job": job}))
    return out


def demo_splits(n_train: int = 240, n_test: int = 60, seed: int = 0) -> tuple[list[DemoExample], list[DemoExample]]:
    """Train and held-out test examples drawn from one seeded stream, so they never share a sentence."""
    ex = make_examples(n_train + n_test, seed)
    return ex[:n_train], ex[n_train:]


def write_demo(out: str | Path, n_train: int = 240, n_test: int = 60, seed: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (Alpaca records) into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = demo_splits(n_train, n_test, seed)
    paths = {}
    for split, rows in (("train", train), ("test", test)):
        p = out / f"{split}.jsonl"
        tmp = p.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r.to_alpaca()) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(p)
        paths[split] = p
    return paths


def demo_data_path() -> dict[str, Path]:
    """The demo files: the committed copies in ``assets/finetune_demo`` when present, else generated once into
    ``data_dir()/datasets/finetune_demo``."""
    from finetune.paths import DEMO_ASSETS, data_dir

    if (DEMO_ASSETS / "train.jsonl").exists() and (DEMO_ASSETS / "test.jsonl").exists():
        return {"train": DEMO_ASSETS / "train.jsonl", "test": DEMO_ASSETS / "test.jsonl"}
    folder = data_dir() / "datasets" / "finetune_demo"
    if not ((folder / "train.jsonl").exists() and (folder / "test.jsonl").exists()):
        return write_demo(folder)
    return {"train": folder / "train.jsonl", "test": folder / "test.jsonl"}


def parse_answer(text: str) -> dict | None:
    """The first JSON object in a model answer (code fences and chatter around it are forgiven)."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    return None


def exact_match(answer: str, expected: dict | str) -> bool:
    """True when the answer's JSON object has exactly the expected keys and values (age must be a number)."""
    if isinstance(expected, str):
        expected = json.loads(expected)
    got = parse_answer(answer)
    return got is not None and got == expected and all(type(got[k]) is type(v) for k, v in expected.items())


def load_split(path: str | Path) -> list[dict]:
    """Alpaca rows of a demo file (train.jsonl / test.jsonl)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def greedy_match_rate(model, tokenizer, rows: list[dict], batch_size: int = 16) -> float:
    """Share of rows whose exact reference answer (then the end-of-turn token) greedy decoding would produce,
    checked with one teacher-forced forward per batch instead of token-by-token generation.

    Equivalent to "greedy output == reference tokens"; a lower bound of ``finetune.compare``'s exact match (which also accepts
    e.g. other whitespace inside the JSON). Cheap enough to track progress during training.
    """
    import torch

    from finetune.data import Example
    from finetune.render import collate, pad_id_of, render_example

    seqs = []
    for r in rows:
        msgs = [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"},
                {"role": "assistant", "content": r["output"]}]
        seqs.append(render_example(tokenizer, Example(msgs, 0), 10**9)[0])
    hits = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in range(0, len(seqs), batch_size):
            idx, tgt = collate(seqs[b:b + batch_size], pad_id_of(tokenizer))  # (B, T)
            pred = model(idx)[0].argmax(-1)  # (B, T)
            mask = tgt != -100
            # the trained span ends with "<|im_end|>\n": greedy stops at <|im_end|>, so the "\n" is not needed
            last = mask.cumsum(1) == mask.sum(1, keepdim=True)
            ok = ((pred == tgt) | ~mask | (last & mask)).all(1)
            hits += int(ok.sum())
    model.train(was_training)
    return hits / max(1, len(rows))


@dataclass
class DemoArgs:
    out: str
    n_train: int = 240
    n_test: int = 60
    seed: int = 0


def main(args: DemoArgs) -> None:
    paths = write_demo(args.out, args.n_train, args.n_test, args.seed)
    for split, p in paths.items():
        print(f"wrote {split}: {p}")


def cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m finetune.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for train.jsonl and test.jsonl")
    ap.add_argument("--n-train", type=int, default=240)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    main(DemoArgs(a.out, a.n_train, a.n_test, a.seed))


if __name__ == "__main__":
    cli()
