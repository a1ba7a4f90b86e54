#!/usr/bin/env python3
"""inputs/prepare.py and inputs/paft_data.py end to end on tiny inputs written here.

Two tokenizers are built on the fly with the `tokenizers` library:
  * "bpe":  byte-level BPE trained on a few sentences, <s> / </s> special tokens, a post-processor
            that adds <s>, tokenizer_config.json without chat template -> the Zephyr template;
  * "word": a word-level tokenizer whose vocabulary is listed here, a ChatML chat_template in
            tokenizer_config.json and no BOS, so expected token ids can be written by hand.
prepare.py runs as a subprocess (like a user runs it); every shard is read back both by the C
reader (check_data, which validates it fully) and by paft_data.py, and the two must agree.

    test_prepare.py --check-data PATH --inputs REPO/inputs --workdir DIR
Prints "N passed, N failed" last; exit status 1 on any failure.
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import traceback

REQUIRED = ["tokenizers", "jinja2", "numpy", "pyarrow"]
missing = []
for module in REQUIRED:
    try:
        __import__(module)
    except ImportError:
        missing.append(module)
if missing:
    print(f"data_prepare_python: {sys.executable} cannot import {', '.join(missing)}: the data "
          f"preparation tests need them (pip install {' '.join(REQUIRED)})")
    print("0 passed, 1 failed")
    sys.exit(1)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa

ARGS = None
paft_data = None

# ---- fixtures ---------------------------------------------------------------------------------

SENTENCES = [
    "What is the capital of France?", "The capital of France is Paris.",
    "Tell me a joke about cats.",
    "Why did the cat sit on the computer? To keep an eye on the mouse.",
    "Summarise the plot of a long novel in one line.",
    "A hero leaves home, suffers, and returns wiser.",
    "You are a helpful assistant.", "How many legs does a spider have?", "Eight legs.",
    "Spiders have eight legs and most have eight eyes.", "Good question!",
]

ULTRACHAT = [
    {"prompt": "q0", "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."}]},
    {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Tell me a joke about cats."},
        {"role": "assistant", "content": "Why did the cat sit on the computer?"},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "To keep an eye on the mouse."}]},
    {"messages": [
        {"role": "user", "content": "How many legs does a spider have?"},
        {"role": "assistant", "content": "Eight legs."}]},
    {"messages": [
        {"role": "user", "content": "Summarise the plot of a long novel in one line."},
        {"role": "assistant", "content": "A hero leaves home, suffers, and returns wiser."}]},
]
# A long user turn: with a small --max-len no assistant token is left and the row is dropped.
LONG_USER = {"messages": [
    {"role": "user", "content": " ".join(["Tell me a joke about cats."] * 12)},
    {"role": "assistant", "content": "Good question!"}]}


def ultrafeedback_rows():
    rows = []
    for i, (q, good, bad) in enumerate([
            ("What is the capital of France?", "The capital of France is Paris.", "Eight legs."),
            ("How many legs does a spider have?",
             "Spiders have eight legs and most have eight eyes.", "Paris."),
            ("Tell me a joke about cats.", "Why did the cat sit on the computer?",
             "Good question!"),
            ("Summarise the plot of a long novel in one line.",
             "A hero leaves home, suffers, and returns wiser.", "What is the capital?")]):
        user = {"role": "user", "content": q}
        rows.append({"prompt": q, "prompt_id": f"id{i}",
                     "chosen": [user, {"role": "assistant", "content": good}],
                     "rejected": [user, {"role": "assistant", "content": bad}],
                     "score_chosen": 8.0, "score_rejected": 3.0})
    return rows


def make_bpe_tokenizer(directory):
    os.makedirs(directory, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = SENTENCES + [f"<|user|>\n{s}\n<|assistant|>\n{s}\n<|system|>\n" for s in SENTENCES]
    tok.train_from_iterator(corpus * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "model_max_length": 2048}, f)
    return tok


# The Zephyr template as a model's own chat_template would spell it.
ZEPHYR_LIKE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + "
               "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def make_word_tokenizer(directory, extra_words=()):
    os.makedirs(directory, exist_ok=True)
    words = set()
    for s in SENTENCES + ["Why?", "user", "assistant", "system"] + list(extra_words):
        words.update(re.findall(r"\w+|[^\w\s]+", s))
    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "chat_template": CHATML}, f)
    return tok


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


# ---- helpers ----------------------------------------------------------------------------------

def work(*parts):
    return os.path.join(ARGS.workdir, *parts)


def prepare(*args, expect_ok=True):
    cmd = [sys.executable, os.path.join(ARGS.inputs, "prepare.py"), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        raise AssertionError(f"prepare.py failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def check_data(path, kind, vocab, seq_len, *extra, expect_ok=True):
    r = subprocess.run([ARGS.check_data, path, kind, str(vocab), str(seq_len), *extra],
                       capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        raise AssertionError(f"check_data {path} failed:\n{r.stdout}{r.stderr}")
    return r


def c_dump(path, kind):
    """Records as the C reader sees them: lists of ints per segment."""
    out = check_data(path, kind, 0, 0, "--dump").stdout
    records = []
    for line in out.splitlines():
        if line.startswith(("sft ", "pref ")):
            body = line.split(":", 1)[1]
            records.append([[int(x) for x in part.split()] for part in body.split("|")])
    return records


def py_records(path, kind):
    d = paft_data.read_token_data(path, kind)
    return [[list(map(int, seg)) for seg in rec] for rec in d.records()]


def read_both(path, kind):
    """Read with C and Python; they must agree. Returns the records."""
    c, py = c_dump(path, kind), py_records(path, kind)
    assert c == py, f"{path}: the C and Python readers disagree:\nC:  {c}\nPy: {py}"
    return py


def mask_runs(ids, mask):
    """Maximal runs of loss-masked ids."""
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


# ---- tests ------------------------------------------------------------------------------------

def test_sft_zephyr_masks():
    """Zephyr template + BPE: masks cover exactly each assistant reply and its </s>."""
    tok = Tokenizer.from_file(work("bpe", "tokenizer.json"))
    write_jsonl(work("uc.jsonl"), ULTRACHAT)
    r = prepare("--kind", "sft", "--input", work("uc.jsonl"), "--tokenizer", work("bpe"),
                "--out-prefix", work("out", "uc"), "--max-len", 512)
    assert "template zephyr" in r.stdout, r.stdout
    path = work("out", "uc_train.bin")
    assert not os.path.exists(work("out", "uc_val.bin")), "no val file without --val-fraction"
    summary = check_data(path, "sft", tok.get_vocab_size(), 512).stdout
    assert re.search(r"records +4\n", summary), summary
    records = read_both(path, "sft")
    bos = tok.token_to_id("<s>")
    for row, (ids, mask) in zip(ULTRACHAT, records):
        assert ids[0] == bos and mask[0] == 0, "one BOS in front, not a target"
        assert ids.count(bos) == 1, "the post-processor's BOS is not added a second time"
        text = tok.decode(ids, skip_special_tokens=False)
        messages = row["messages"]
        expected_text = "<s>" + "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages)
        assert text == expected_text, f"rendered {text!r}\nexpected {expected_text!r}"
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        runs = [tok.decode(run, skip_special_tokens=False) for run in mask_runs(ids, mask)]
        assert runs == [reply + "</s>" for reply in replies], f"masked {runs} vs {replies}"


def test_sft_chatml_hand_ids():
    """The model's chat template from tokenizer_config.json, ids and mask written out by hand."""
    vocab = json.load(open(work("word", "tokenizer.json")))["model"]["vocab"]
    rows = [{"messages": [{"role": "user", "content": "How many legs?"},
                          {"role": "assistant", "content": "Eight legs."}]}]
    write_jsonl(work("small.jsonl"), rows)
    prepare("--kind", "sft", "--input", work("small.jsonl"), "--tokenizer", work("word"),
            "--out-prefix", work("out", "small"), "--max-len", 64)
    [(ids, mask)] = read_both(work("out", "small_train.bin"), "sft")
    # <|im_start|>user\nHow many legs?<|im_end|>\n<|im_start|>assistant\nEight legs.<|im_end|>\n
    words = ["<|im_start|>", "user", "How", "many", "legs", "?", "<|im_end|>",
             "<|im_start|>", "assistant", "Eight", "legs", ".", "<|im_end|>"]
    assert ids == [vocab[w] for w in words], f"{ids} vs {[vocab[w] for w in words]}"
    assert mask == [0] * 9 + [1] * 4, mask  # no BOS: the config has none, no post-processor


# Mistral-7B-Instruct-v0.3's template (abridged to its turns): the system message goes into the
# last user turn only, so a conversation prefix is not a prefix of the whole conversation, and each
# reply is written as ' ' + content|trim + eos.
MISTRAL_V3 = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content']|trim + eos_token }}"
    "{%- endif %}{%- endfor %}")


def make_metaspace_tokenizer(directory):
    """A Llama / Mistral style tokenizer: BPE over Metaspace, so a word's token starts at the
    space before it ("[/INST] yes" -> "▁yes")."""
    os.makedirs(directory, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator([f"[INST] {s}[/INST] {s}" for s in SENTENCES + ["yes no Why?"]] * 3,
                            trainer)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": MISTRAL_V3}, f)
    return tok


def test_sft_template_not_prefix_stable():
    """A template that renders earlier turns differently once more follow: the mask still covers
    exactly the replies (with the word-start space and </s>), never the same words in a user
    turn, and a reply the template trims is found."""
    tok = make_metaspace_tokenizer(work("sp"))
    system = {"role": "system", "content": "You are a helpful assistant."}
    rows = [{"messages": [system,
                          {"role": "user", "content": "Is Paris the capital? Answer yes or no."},
                          {"role": "assistant", "content": "yes"},
                          {"role": "user", "content": "Why?"},
                          {"role": "assistant", "content": " The capital of France is Paris. \n"}]}]
    write_jsonl(work("mistral.jsonl"), rows)
    prepare("--kind", "sft", "--input", work("mistral.jsonl"), "--tokenizer", work("sp"),
            "--out-prefix", work("out", "mistral"), "--max-len", 512)
    [(ids, mask)] = read_both(work("out", "mistral_train.bin"), "sft")
    text = tok.decode(ids, skip_special_tokens=False)
    assert "Answer yes or no.[/INST] yes</s>[INST] Why?[/INST] The capital" in text, text
    runs = [tok.decode(run, skip_special_tokens=False) for run in mask_runs(ids, mask)]
    assert runs == ["yes</s>", "The capital of France is Paris.</s>"], runs
    reply = tok.encode(" yes", add_special_tokens=False).ids
    first = mask.index(1)
    assert ids[first:first + len(reply)] == reply, "the reply's own '▁yes', not the user's 'yes'"


def test_sft_truncation_and_drop():
    tok = Tokenizer.from_file(work("bpe", "tokenizer.json"))
    write_jsonl(work("uc_long.jsonl"), ULTRACHAT + [LONG_USER])
    prepare("--kind", "sft", "--input", work("uc_long.jsonl"), "--tokenizer", work("bpe"),
            "--out-prefix", work("out", "full"), "--max-len", 4096)
    full = read_both(work("out", "full_train.bin"), "sft")
    assert len(full) == 5
    # The cut: just past the first loss token of the latest-starting reply of the 4 short rows,
    # so they all keep some reply while the long user turn leaves row 4 with none.
    first_target = [mask.index(1) for _, mask in full]
    cut = max(first_target[:4]) + 1
    assert first_target[4] >= cut, "the long user turn must outlast the cut"
    r = prepare("--kind", "sft", "--input", work("uc_long.jsonl"), "--tokenizer", work("bpe"),
                "--out-prefix", work("out", "cut"), "--max-len", cut)
    assert "dropped: no assistant tokens: 1" in r.stdout, r.stdout
    short = read_both(work("out", "cut_train.bin"), "sft")
    kept = [rec for rec in full[:4] if sum(rec[1][:cut][1:]) > 0]
    assert len(short) == len(kept) == 4
    for (ids, mask), (fids, fmask) in zip(short, kept):
        assert len(ids) == min(cut, len(fids)), "truncated to --max-len"
        assert ids == fids[:cut] and mask == fmask[:cut], "keep-start truncation"
    assert any(len(f[0]) > cut for f in kept), "the test must truncate something"
    check_data(work("out", "cut_train.bin"), "sft", tok.get_vocab_size(), cut)
    r = check_data(work("out", "full_train.bin"), "sft", 0, cut, expect_ok=False)
    first_long = next(i for i, (ids, _) in enumerate(full) if len(ids) > cut)
    assert r.returncode != 0 and f"full_train.bin: record {first_long} has " \
        f"{len(full[first_long][0])} tokens, longer than seq_len {cut}" in r.stderr, r.stderr


def test_split_parquet_and_determinism():
    rows = ULTRACHAT * 2  # 8 rows
    write_jsonl(work("uc8.jsonl"), rows)
    write_parquet(work("uc8.parquet"), rows)
    common = ["--kind", "sft", "--tokenizer", work("bpe"), "--max-len", 512]
    prepare(*common, "--input", work("uc8.jsonl"), "--out-prefix", work("out", "all"))
    prepare(*common, "--input", work("uc8.jsonl"), "--out-prefix", work("out", "s0"),
            "--val-fraction", 0.25, "--seed", 0)
    prepare(*common, "--input", work("uc8.parquet"), "--out-prefix", work("out", "pq"),
            "--val-fraction", 0.25, "--seed", 0)
    prepare(*common, "--input", work("uc8.jsonl"), "--out-prefix", work("out", "s0again"),
            "--val-fraction", 0.25, "--seed", 0)
    with open(work("uc8.json"), "w") as f:  # one JSON array, split over two files
        json.dump(rows[:3], f, indent=1)
    write_jsonl(work("uc8_rest.jsonl"), rows[3:])
    prepare(*common, "--input", work("uc8.json"), work("uc8_rest.jsonl"),
            "--out-prefix", work("out", "js"), "--val-fraction", 0.25, "--seed", 0)
    allrec = read_both(work("out", "all_train.bin"), "sft")
    train = read_both(work("out", "s0_train.bin"), "sft")
    val = read_both(work("out", "s0_val.bin"), "sft")
    assert len(train) == 6 and len(val) == 2, (len(train), len(val))
    key = lambda rec: tuple(map(tuple, rec))  # noqa: E731
    assert sorted(map(key, train + val)) == sorted(map(key, allrec)), "the split loses nothing"
    for suffix in ("_train.bin", "_val.bin"):
        a = open(work("out", "s0" + suffix), "rb").read()
        assert a == open(work("out", "s0again" + suffix), "rb").read(), "same seed, same bytes"
        assert a == open(work("out", "pq" + suffix), "rb").read(), "parquet == JSONL"
        assert a == open(work("out", "js" + suffix), "rb").read(), "JSON + JSONL == JSONL"
    # The validation rows are the ones random.Random(seed).sample picks (documented).
    import random
    picked = sorted(random.Random(0).sample(range(8), 2))
    assert sorted(map(key, val)) == sorted(key(allrec[i]) for i in picked)
    other = set()
    for seed in range(1, 6):
        prepare(*common, "--input", work("uc8.jsonl"), "--out-prefix", work("out", f"s{seed}"),
                "--val-fraction", 0.25, "--seed", seed)
        other.add(open(work("out", f"s{seed}_val.bin"), "rb").read())
    assert len(other) > 1, "the seed changes the split"


def test_pref_ultrafeedback():
    tok = Tokenizer.from_file(work("bpe", "tokenizer.json"))
    rows = ultrafeedback_rows()
    write_parquet(work("uf.parquet"), rows)
    prepare("--kind", "pref", "--input", work("uf.parquet"), "--tokenizer", work("bpe"),
            "--out-prefix", work("out", "uf"), "--max-len", 512, "--max-prompt-len", 256)
    path = work("out", "uf_train.bin")
    summary = check_data(path, "pref", tok.get_vocab_size(), 512).stdout
    assert re.search(r"kind +pref\n", summary) and re.search(r"records +4\n", summary), summary
    records = read_both(path, "pref")
    for row, (prompt, chosen, rejected) in zip(rows, records):
        d = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
        assert d(prompt) == f"<s><|user|>\n{row['prompt']}</s>\n<|assistant|>\n", d(prompt)
        assert d(chosen) == row["chosen"][1]["content"] + "</s>", d(chosen)
        assert d(rejected) == row["rejected"][1]["content"] + "</s>", d(rejected)
    r = check_data(path, "sft", 0, 0, expect_ok=False)
    assert r.returncode != 0 and "holds pref data but sft data is needed" in r.stderr


def test_pref_truncation():
    """TRL's rule, on hand-picked lengths: prompt keep-end (BOS kept), completions keep-start."""
    tok = Tokenizer.from_file(work("bpe", "tokenizer.json"))
    q = " ".join(["Summarise the plot of a long novel in one line."] * 4)
    long_answer = " ".join(["Spiders have eight legs and most have eight eyes."] * 3)
    rows = [
        {"prompt": q, "chosen": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": "Eight legs."}],
         "rejected": [{"role": "user", "content": q},
                      {"role": "assistant", "content": "Paris."}]},
        {"prompt": "Why?", "chosen": [{"role": "user", "content": "Why?"},
                                      {"role": "assistant", "content": long_answer}],
         "rejected": [{"role": "user", "content": "Why?"},
                      {"role": "assistant", "content": "Good question!"}]},
        {"prompt": q, "chosen": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": long_answer}],
         "rejected": [{"role": "user", "content": q},
                      {"role": "assistant", "content": "Paris."}]},
    ]
    write_jsonl(work("uf_trunc.jsonl"), rows)
    prepare("--kind", "pref", "--input", work("uf_trunc.jsonl"), "--tokenizer", work("bpe"),
            "--out-prefix", work("out", "uf_full"), "--max-len", 4096, "--max-prompt-len", 2048)
    full = read_both(work("out", "uf_full_train.bin"), "pref")
    L, P = 40, 16
    (p0, c0, r0), (p1, c1, r1), (p2, c2, r2) = full
    assert len(p0) + max(len(c0), len(r0)) > L and len(c0) <= L - P, \
        "row 0: only the prompt is long"
    assert len(p1) + len(c1) > L and len(p1) < P, "row 1: only the answer is long"
    assert len(p2) > P and len(c2) > L - P, "row 2: both are long"
    r = prepare("--kind", "pref", "--input", work("uf_trunc.jsonl"), "--tokenizer", work("bpe"),
                "--out-prefix", work("out", "uf_cut"), "--max-len", L, "--max-prompt-len", P)
    assert "truncated: 3" in r.stdout, r.stdout
    cut = read_both(work("out", "uf_cut_train.bin"), "pref")
    bos = tok.token_to_id("<s>")
    (q0, d0, s0), (q1, d1, s1), (q2, d2, s2) = cut
    # row 0: prompt -> BOS + its last P-1 tokens; the answers fit and stay whole
    assert q0 == [bos] + p0[-(P - 1):] and d0 == c0 and s0 == r0, (q0, d0, s0)
    # row 1: the prompt is short and stays; then answers keep their first L-P tokens
    assert q1 == p1 and d1 == c1[:L - P] and s1 == r1[:L - P], (q1, d1, s1)
    # row 2: both cuts
    assert q2 == [bos] + p2[-(P - 1):] and d2 == c2[:L - P] and s2 == r2, (q2, d2, s2)
    for q, d, s in cut:
        assert len(q) + max(len(d), len(s)) <= L
    check_data(work("out", "uf_cut_train.bin"), "pref", 0, L)

    # A template that writes the BOS itself (as Llama-3's does: "{{ bos_token }}..."): prepare.py
    # adds none, and the cut prompt still keeps it, with --bos auto and --bos never.
    os.makedirs(work("bos_tpl"), exist_ok=True)
    shutil.copy(work("bpe", "tokenizer.json"), work("bos_tpl", "tokenizer.json"))
    with open(work("bos_tpl", "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>",
                   "chat_template": "{{ bos_token }}" + ZEPHYR_LIKE}, f)
    for policy in ("auto", "never"):
        prepare("--kind", "pref", "--input", work("uf_trunc.jsonl"), "--tokenizer",
                work("bos_tpl"), "--out-prefix", work("out", f"uf_tplbos_{policy}"),
                "--max-len", L, "--max-prompt-len", P, "--bos", policy)
        tpl = read_both(work("out", f"uf_tplbos_{policy}_train.bin"), "pref")
        assert tpl == cut, f"--bos {policy}: a BOS written by the template is lost in the cut:\n" \
            f"{[t[0][:3] for t in tpl]} vs {[c[0][:3] for c in cut]}"


def test_pref_answer_only_schema_and_chatml():
    """chosen/rejected as plain strings + the model's template, ids by hand, no BOS."""
    vocab = json.load(open(work("word", "tokenizer.json")))["model"]["vocab"]
    rows = [{"prompt": "Why?", "chosen": "Eight legs.", "rejected": "Paris."}]
    write_jsonl(work("uf_plain.jsonl"), rows)
    prepare("--kind", "pref", "--input", work("uf_plain.jsonl"), "--tokenizer", work("word"),
            "--out-prefix", work("out", "plain"), "--max-len", 64)
    [(p, c, r)] = read_both(work("out", "plain_train.bin"), "pref")
    ids = lambda *ws: [vocab[w] for w in ws]  # noqa: E731
    assert p == ids("<|im_start|>", "user", "Why", "?", "<|im_end|>", "<|im_start|>",
                    "assistant"), p
    assert c == ids("Eight", "legs", ".", "<|im_end|>"), c
    assert r == ids("Paris", ".", "<|im_end|>"), r


def test_shuffle_order_matches_c():
    path = work("out", "all_train.bin")  # 8 records (test_split_parquet_and_determinism)
    for seed, epoch in [(0, 0), (7, 3), (2**63 + 5, 1)]:
        out = check_data(path, "sft", 0, 0, "--order", str(seed), str(epoch)).stdout
        c_order = [int(x) for x in re.search(r"order:(.*)", out).group(1).split()]
        assert c_order == paft_data.permutation(8, seed, epoch), (seed, epoch, c_order)
    assert paft_data.permutation(8, 7, 3) != paft_data.permutation(8, 7, 4)


def test_python_writer_and_corruption():
    path = work("out", "py.bin")
    with paft_data.TokenDataWriter(path, "sft", 100) as w:
        w.add_sft([1, 2, 99], [0, 1, 1])
        w.add_sft(np.array([5], dtype=np.int64), [1])
    assert read_both(path, "sft") == [[[1, 2, 99], [0, 1, 1]], [[5], [1]]]
    assert not [f for f in os.listdir(work("out")) if ".tmp." in f], "no temporary files left"
    for bad in ([1, 100], [-1]):
        try:
            with paft_data.TokenDataWriter(work("out", "never.bin"), "sft", 100) as w:
                w.add_sft(bad, [0] * len(bad))
            raise AssertionError(f"{bad} accepted")
        except ValueError as e:
            assert "outside the vocabulary [0, 100)" in str(e), e
    assert not os.path.exists(work("out", "never.bin")), "a failed write leaves no file"
    data = bytearray(open(path, "rb").read())
    data[64 + 8 * 3 + 4] ^= 1  # token 1 of record 0: 2 -> 3, still a valid id
    open(work("out", "flipped.bin"), "wb").write(bytes(data))
    r = check_data(work("out", "flipped.bin"), "sft", 0, 0, expect_ok=False)
    assert r.returncode == 1 and "flipped.bin: data checksum mismatch" in r.stderr, r.stderr
    try:
        paft_data.read_token_data(work("out", "flipped.bin"))
        raise AssertionError("python reader accepted a corrupt file")
    except paft_data.TokenDataError as e:
        assert "checksum" in str(e)


def test_bad_input_rows():
    write_jsonl(work("bad.jsonl"), [ULTRACHAT[0], {"conversation": []}])
    r = prepare("--kind", "sft", "--input", work("bad.jsonl"), "--tokenizer", work("bpe"),
                "--out-prefix", work("out", "bad"), expect_ok=False)
    assert r.returncode != 0 and re.search(r"bad\.jsonl:2: an SFT row needs a 'messages' list",
                                           r.stderr), r.stderr
    assert not os.path.exists(work("out", "bad_train.bin")), "no partial output"
    with open(work("badjson.jsonl"), "w") as f:
        f.write(json.dumps(ULTRACHAT[0]) + "\n{not json\n")
    r = prepare("--kind", "sft", "--input", work("badjson.jsonl"), "--tokenizer", work("bpe"),
                "--out-prefix", work("out", "bad"), expect_ok=False)
    assert r.returncode != 0 and "badjson.jsonl:2: not valid JSON" in r.stderr, r.stderr
    write_jsonl(work("badpref.jsonl"), [{"prompt": "x", "chosen": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        "rejected": [{"role": "user", "content": "DIFFERENT"},
                     {"role": "assistant", "content": "c"}]}])
    r = prepare("--kind", "pref", "--input", work("badpref.jsonl"), "--tokenizer", work("bpe"),
                "--out-prefix", work("out", "bad"), expect_ok=False)
    assert r.returncode != 0 and "badpref.jsonl:1: 'chosen' and 'rejected' differ" in r.stderr, \
        r.stderr
    r = prepare("--kind", "sft", "--input", work("uc.jsonl"), "--tokenizer", work("nowhere"),
                "--out-prefix", work("out", "bad"), expect_ok=False)
    assert r.returncode != 0 and "nowhere/tokenizer.json: not found" in r.stderr, r.stderr


def expect_error(what, args, message):
    """prepare.py fails with status 1 and one line that holds message (no traceback)."""
    r = prepare(*args, expect_ok=False)
    assert r.returncode == 1, f"{what}: status {r.returncode}\n{r.stdout}{r.stderr}"
    assert message in r.stderr, f"{what}: wanted {message!r} in stderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, f"{what}: a traceback:\n{r.stderr}"
    assert len(r.stderr.strip().splitlines()) == 1, f"{what}: more than one line:\n{r.stderr}"
    return r


def no_temporaries(directory):
    left = [f for f in os.listdir(directory) if ".tmp." in f]
    assert not left, f"temporary files left behind: {left}"


def test_no_usable_record_keeps_old_files():
    """Regression: "no usable record" used to be reported after PREFIX_train.bin had already been
    replaced by a 0-record file. Now nothing is written and the earlier files stay, byte for byte."""
    write_jsonl(work("keep.jsonl"), ULTRACHAT * 2)
    common = ["--kind", "sft", "--tokenizer", work("bpe"), "--max-len", 512]
    prefix = work("out", "keep")
    prepare(*common, "--input", work("keep.jsonl"), "--out-prefix", prefix, "--val-fraction", 0.25)
    old = {s: open(f"{prefix}_{s}.bin", "rb").read() for s in ("train", "val")}
    no_reply = [{"messages": [{"role": "user", "content": "Why?"}]}] * 3
    write_jsonl(work("noreply.jsonl"), no_reply)
    open(work("empty.jsonl"), "w").close()
    for what, extra in [
            ("rows without an assistant turn", ["--input", work("noreply.jsonl")]),
            ("an empty input", ["--input", work("empty.jsonl")]),
            ("everything to validation", ["--input", work("keep.jsonl"), "--limit", 1,
                                          "--val-fraction", 0.99])]:
        expect_error(what, [*common, *extra, "--out-prefix", prefix],
                     "keep_train.bin: no usable record for the training file")
        for split in ("train", "val"):
            assert open(f"{prefix}_{split}.bin", "rb").read() == old[split], \
                f"{what}: {split} file changed"
        no_temporaries(work("out"))
    # A bad row late in the input: neither file is touched (train is not renewed without val).
    write_jsonl(work("late_bad.jsonl"), ULTRACHAT * 80 + [{"conversation": []}])
    expect_error("a bad row after the first batch",
                 [*common, "--input", work("late_bad.jsonl"), "--out-prefix", prefix,
                  "--val-fraction", 0.25], "late_bad.jsonl:321: an SFT row needs")
    for split in ("train", "val"):
        assert open(f"{prefix}_{split}.bin", "rb").read() == old[split], split
    no_temporaries(work("out"))
    # Regression: when every row drawn for validation has nothing to train on, a 0-record val file
    # was written, which paft eval scores as NLL 0 over 0 tokens (a perfect model). Now an error.
    write_jsonl(work("val_noreply.jsonl"), ULTRACHAT[:3] + no_reply[:1])
    seed = next(s for s in range(1000) if random.Random(s).sample(range(4), 1) == [3])
    expect_error("no usable validation record",
                 [*common, "--input", work("val_noreply.jsonl"), "--out-prefix", prefix,
                  "--val-fraction", 0.25, "--seed", seed],
                 "keep_val.bin: no usable record for the validation file")
    for split in ("train", "val"):
        assert open(f"{prefix}_{split}.bin", "rb").read() == old[split], split
    no_temporaries(work("out"))


def test_val_fraction_zero_removes_old_val():
    """A run without validation removes the val file of an earlier run with the same prefix,
    which no longer matches the new training file (the configs would read it), and says so."""
    write_jsonl(work("v.jsonl"), ULTRACHAT * 2)
    common = ["--kind", "sft", "--tokenizer", work("bpe"), "--max-len", 512, "--input",
              work("v.jsonl"), "--out-prefix", work("out", "v")]
    prepare(*common, "--val-fraction", 0.25)
    assert os.path.exists(work("out", "v_val.bin"))
    r = prepare(*common)
    assert not os.path.exists(work("out", "v_val.bin")), "stale val file left"
    assert "v_val.bin: removed" in r.stdout, r.stdout
    assert len(read_both(work("out", "v_train.bin"), "sft")) == 8


def test_unreadable_inputs_and_settings():
    """Every bad input or setting stops with one line naming the file, not a traceback."""
    common = ["--kind", "sft", "--tokenizer", work("bpe"), "--out-prefix", work("out", "u")]
    with open(work("latin1.jsonl"), "wb") as f:
        f.write(json.dumps(ULTRACHAT[0]).encode() + b"\n" +
                '{"messages": [{"role": "user", "content": "caf\u00e9"}]}\n'.encode("latin-1"))
    expect_error("non-UTF-8 input", [*common, "--input", work("latin1.jsonl")],
                 "latin1.jsonl: not UTF-8 text")
    with open(work("broken.json"), "w") as f:
        f.write('[{"messages": []},\n {"messages": ')
    expect_error("bad JSON array", [*common, "--input", work("broken.json")],
                 "broken.json: not a valid JSON array (line 2")
    with open(work("fake.parquet"), "w") as f:
        f.write('{"messages": []}\n')
    expect_error("not parquet", [*common, "--input", work("fake.parquet")],
                 "fake.parquet: not a readable parquet file")
    write_jsonl(work("u.jsonl"), ULTRACHAT)
    expect_error("missing --chat-template", [*common, "--input", work("u.jsonl"),
                                             "--chat-template", work("nowhere.jinja")],
                 "nowhere.jinja: no such file")
    for name, text, message in [
            ("tokenizer_config.json", "{not json", "tokenizer_config.json: not valid JSON"),
            ("tokenizer_config.json", "[1, 2]", "tokenizer_config.json: expected a JSON object"),
            ("tokenizer.json", '{"model": 5}', "tokenizer.json: not a valid Hugging Face")]:
        broken = work("broken_tok")
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(work("bpe"), broken)
        with open(os.path.join(broken, name), "w") as f:
            f.write(text)
        expect_error(f"malformed {name}", ["--kind", "sft", "--tokenizer", broken, "--input",
                                           work("u.jsonl"), "--out-prefix", work("out", "u")],
                     message)
    with open(work("plain_file"), "w") as f:
        f.write("x")
    expect_error("--out-prefix under a plain file",
                 ["--kind", "sft", "--tokenizer", work("bpe"), "--input", work("u.jsonl"),
                  "--out-prefix", work("plain_file", "sub", "u")], "plain_file/sub: cannot create")
    expect_error("--out-prefix under a plain file (direct)",
                 ["--kind", "sft", "--tokenizer", work("bpe"), "--input", work("u.jsonl"),
                  "--out-prefix", work("plain_file", "u")], "plain_file: not a directory")
    if os.geteuid() != 0:  # root writes anywhere
        os.makedirs(work("readonly"), exist_ok=True)
        os.chmod(work("readonly"), 0o555)
        try:
            expect_error("unwritable directory",
                         ["--kind", "sft", "--tokenizer", work("bpe"), "--input", work("u.jsonl"),
                          "--out-prefix", work("readonly", "u")], "readonly/u_train.bin")
        finally:
            os.chmod(work("readonly"), 0o755)
    # The val file's path is a directory: found before anything is written, so the train file
    # of an earlier run is not replaced without its val file.
    prepare(*common, "--input", work("u.jsonl"))
    old_train = open(work("out", "u_train.bin"), "rb").read()
    os.makedirs(work("out", "u_val.bin"))
    expect_error("val path is a directory", [*common, "--input", work("u.jsonl"),
                                             "--val-fraction", 0.5, "--seed", 3],
                 "u_val.bin: is a directory")
    assert open(work("out", "u_train.bin"), "rb").read() == old_train, "train file replaced"
    os.rmdir(work("out", "u_val.bin"))
    no_temporaries(work("out"))
    r = prepare(*common, "--input", work("u.jsonl"), "--limit", -1, expect_ok=False)
    assert r.returncode == 2 and "--limit must be 0 (all rows) or a positive" in r.stderr, r.stderr


def main():
    global ARGS, paft_data
    p = argparse.ArgumentParser()
    p.add_argument("--check-data", required=True)
    p.add_argument("--inputs", required=True, help="the repository's inputs/ directory")
    p.add_argument("--workdir", required=True)
    ARGS = p.parse_args()
    sys.path.insert(0, ARGS.inputs)
    import paft_data as module
    paft_data = module
    shutil.rmtree(ARGS.workdir, ignore_errors=True)
    os.makedirs(work("out"))
    make_bpe_tokenizer(work("bpe"))
    make_word_tokenizer(work("word"))

    tests = [test_sft_zephyr_masks, test_sft_chatml_hand_ids, test_sft_template_not_prefix_stable,
             test_sft_truncation_and_drop,
             test_split_parquet_and_determinism, test_pref_ultrafeedback, test_pref_truncation,
             test_pref_answer_only_schema_and_chatml, test_shuffle_order_matches_c,
             test_python_writer_and_corruption, test_bad_input_rows,
             test_no_usable_record_keeps_old_files, test_val_fraction_zero_removes_old_val,
             test_unreadable_inputs_and_settings]
    passed = failed = 0
    for test in tests:
        try:
            test()
            passed += 1
            print(f"ok   {test.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {test.__name__}")
            traceback.print_exc(file=sys.stdout)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
