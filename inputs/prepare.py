#!/usr/bin/env python3
"""Turn chat data sets into paft token data files (docs/DATA_FORMAT.md).

    python3 inputs/prepare.py --kind sft  --input ultrachat_200k/train_sft-*.parquet \\
        --tokenizer inputs/models/mistral-7b --out-prefix inputs/data/ultrachat --max-len 2048
    python3 inputs/prepare.py --kind pref --input ultrafeedback_binarized/train_prefs-*.parquet \\
        --tokenizer inputs/models/mistral-7b --out-prefix inputs/data/ultrafeedback \\
        --max-len 1024 --max-prompt-len 512

writes PREFIX_train.bin and (with --val-fraction > 0) PREFIX_val.bin, both or neither: each is
built under a temporary name and renamed into place only when both are complete and each has at
least one record, so a failed run leaves the files of an earlier run untouched. A run
that writes no PREFIX_val.bin removes one left by an earlier run (it would not match the new
training file). Errors are one line naming the file and the problem, exit status 1.

Inputs (JSONL, a JSON array, or parquet; several files are read in order as one data set):
  sft   UltraChat:       {"messages": [{"role": "user"|"assistant"|"system", "content": str}, ...]}
  pref  UltraFeedback-binarized: {"prompt": str | messages, "chosen": messages | str,
                                  "rejected": messages | str}
        chosen/rejected may hold the whole conversation (prompt turns + the answer, as in
        HuggingFaceH4/ultrafeedback_binarized) or only the answer.

Rendering: the model's chat template (tokenizer_config.json "chat_template", or
chat_template.jinja, in the --tokenizer directory), or the Zephyr template when it has none:
    <|system|>\\n...</s>\\n<|user|>\\n...</s>\\n<|assistant|>\\n...</s>\\n
rendered with jinja2 the way transformers does (sandboxed, trim_blocks, lstrip_blocks).

Tokenizing: offline, with the directory's tokenizer.json (Hugging Face `tokenizers`), on the
rendered text without the tokenizer's post-processor (special tokens written by the template are
recognised as such). BOS: with --bos auto (default) one BOS id is put in front unless the rendered
text already starts with it (templates such as Llama-3's write it themselves); the BOS is
tokenizer_config.json's bos_token, or the token the tokenizer's post-processor puts first.

SFT loss mask: 1 exactly on the tokens of assistant turns: each turn's content and the
end-of-turn text the template writes after it (e.g. "</s>", so the model learns to stop), without
trailing whitespace; 0 on system/user turns and on the role headers ("<|assistant|>\\n"). The turn
boundaries come from rendering the conversation prefix by prefix and mapping the character spans
to tokens through the tokenizer's offsets (a token belongs to the span its first character is in);
templates that are not prefix-stable are located by rendering with a marker for the reply.

Truncation: SFT keeps the first --max-len tokens (records left with no loss token are dropped).
Preference pairs are cut as TRL's DPO trainer does (truncation_mode keep_end): when prompt +
longer completion exceeds --max-len, the prompt keeps its last --max-prompt-len tokens; if still
too long, both completions keep their first --max-len - --max-prompt-len tokens. Unlike TRL, a BOS
at the start of the prompt (added by --bos or written by the template) is kept when the prompt is
cut from the left.

Split: --val-fraction of the rows (round(f * rows), at least one when f > 0), drawn with
random.Random(--seed), go to PREFIX_val.bin; the rest, in input order, to PREFIX_train.bin.

Needs: tokenizers, jinja2, numpy, and pyarrow for parquet input (pip install tokenizers jinja2
numpy pyarrow). No torch or transformers.
"""

import argparse
import json
import os
import random
import sys
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paft_data  # noqa: E402

# The Zephyr chat template (the format of zephyr-7b-beta), written for paft.
ZEPHYR_TEMPLATE = (
    r"{% for message in messages %}"
    r"{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    r"{{ raise_exception('unknown role ' + message['role']) }}"
    r"{% endif %}"
    r"{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

BATCH_ROWS = 256


class DataError(Exception):
    """A row of the input cannot be used as it is; the message says where and why."""


class SkipRow(Exception):
    """A well-formed row that yields no trainable record (counted, not fatal)."""


def fail(message):
    """Stop with one line naming the file and what is wrong, exit status 1."""
    sys.exit(f"prepare.py: error: {message}")


def read_text(path, what):
    """The whole of a UTF-8 text file, or a clean error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        fail(f"{path}: {what} is not UTF-8 text (byte {e.start}: {e.reason})")
    except OSError as e:
        fail(f"{path}: cannot read {what}: {e.strerror or e}")


# ---- tokenizer and chat template ----------------------------------------------------------------

def _token_text(value):
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class ChatTokenizer:
    """tokenizer.json + the chat template and special tokens of tokenizer_config.json."""

    def __init__(self, directory, template_path=None, bos_policy="auto"):
        from tokenizers import Tokenizer

        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            fail(f"{path}: not found (--tokenizer must be a directory holding tokenizer.json)")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            fail(f"{path}: not a valid Hugging Face tokenizer.json ({str(e).splitlines()[0]})")
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

        config = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            try:
                config = json.loads(read_text(config_path, "tokenizer_config.json"))
            except json.JSONDecodeError as e:
                fail(f"{config_path}: not valid JSON (line {e.lineno}: {e.msg})")
            if not isinstance(config, dict):
                fail(f"{config_path}: expected a JSON object, found {type(config).__name__}")
        # Every "*_token" of the config is visible to the template, as in transformers.
        self.special = {k: _token_text(v) for k, v in config.items()
                        if k.endswith("_token") and _token_text(v) is not None}

        self.template_source, self.template_name = self._find_template(directory, config,
                                                                       template_path)
        if self.template_name == "zephyr" and "eos_token" not in self.special:
            self.special["eos_token"] = "</s>"
        if self.template_name == "zephyr" and self.tokenizer.token_to_id(
                self.special["eos_token"]) is None:
            print(f"prepare.py: warning: the Zephyr template's end-of-turn "
                  f"{self.special['eos_token']!r} is not a token of {path}; it will be spelled "
                  "out in pieces", file=sys.stderr)
        try:
            self.template = self._compile(self.template_source)
        except Exception as e:  # jinja2 TemplateSyntaxError and friends
            fail(f"{self.template_name}: the chat template does not compile ({e})")

        # The model's BOS, whoever writes it: prepare.py (self.bos_id, as --bos asks) or the
        # template itself (Llama-3's starts with {{ bos_token }}); a prompt cut from the left keeps
        # it either way.
        self.model_bos_id = self._find_bos()
        self.bos_id = None
        if bos_policy != "never":
            self.bos_id = self.model_bos_id
            if bos_policy == "always" and self.bos_id is None:
                sys.exit(f"prepare.py: error: --bos always, but {directory} defines no BOS token "
                         "(no bos_token in tokenizer_config.json, none added by the tokenizer)")
        self.bos_policy = bos_policy

    @staticmethod
    def _find_template(directory, config, template_path):
        if template_path:
            if template_path == "zephyr":
                return ZEPHYR_TEMPLATE, "zephyr"
            if not os.path.isfile(template_path):
                fail(f"{template_path}: no such file (--chat-template takes a jinja file or "
                     "'zephyr')")
            return read_text(template_path, "the chat template"), template_path
        jinja_file = os.path.join(directory, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            return read_text(jinja_file, "the chat template"), jinja_file
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template.strip():
            return template, "tokenizer_config.json"
        return ZEPHYR_TEMPLATE, "zephyr"

    @staticmethod
    def _compile(source):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False,
                                                                 indent=indent)
        return env.from_string(source)

    def _find_bos(self):
        name = self.special.get("bos_token")
        if name is not None:
            bos = self.tokenizer.token_to_id(name)
            if bos is not None:
                return bos
        # No usable bos_token: take what the post-processor puts in front of the text, if any.
        plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        full = self.tokenizer.encode("a", add_special_tokens=True).ids
        if len(full) > len(plain) and full[1:1 + len(plain)] == plain:
            return full[0]
        return None

    def render(self, messages, add_generation_prompt):
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    tools=None, documents=None, **self.special)

    def render_or_none(self, messages, add_generation_prompt):
        """render(), or None where a template refuses a conversation prefix (e.g. no messages)."""
        try:
            return self.render(messages, add_generation_prompt)
        except Exception:
            return None

    def encode_batch(self, texts):
        return self.tokenizer.encode_batch(texts, add_special_tokens=False)

    def add_bos(self, ids):
        """Return (ids with one BOS in front as --bos asks, number of ids added)."""
        if self.bos_id is None or (ids and ids[0] == self.bos_id and self.bos_policy == "auto"):
            return ids, 0
        return [self.bos_id] + ids, 1


# ---- reading inputs ---------------------------------------------------------------------------

def read_error(path, e):
    """A DataError naming the input file for an error while reading it."""
    if isinstance(e, UnicodeDecodeError):
        return DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); inputs must be "
                         "UTF-8 JSONL, a JSON array, or parquet")
    if isinstance(e, json.JSONDecodeError):
        return DataError(f"{path}: not a valid JSON array (line {e.lineno} column {e.colno}: "
                         f"{e.msg})")
    if isinstance(e, OSError):
        return DataError(f"{path}: cannot read: {e.strerror or e}")
    if path.endswith(".parquet"):  # pyarrow's ArrowInvalid / ArrowException
        return DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})")
    return DataError(f"{path}: cannot read: {e}")


def count_rows(path):
    """Rows in an input file, without parsing JSONL lines (the split needs the count first)."""
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            return pq.ParquetFile(path).metadata.num_rows
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
            f.seek(0)
            if head.startswith("["):
                return sum(1 for _ in iter_rows(path))
            return sum(1 for line in f if line.strip())
    except DataError:
        raise
    except Exception as e:  # OSError, UnicodeDecodeError, pyarrow's errors
        raise read_error(path, e) from None


def iter_rows(path):
    """Yield (where, row) for each row: where = 'FILE:LINE' or 'FILE: row N' for messages."""
    try:
        yield from _iter_rows(path)
    except DataError:
        raise
    except Exception as e:  # OSError, UnicodeDecodeError, JSONDecodeError, pyarrow's errors
        raise read_error(path, e) from None


def _iter_rows(path):
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield f"{path}: row {index}", row
                index += 1
        return
    with open(path, encoding="utf-8") as f:
        first = f.read(1)
        while first and first.isspace():
            first = f.read(1)
        f.seek(0)
        if first == "[":  # one JSON array
            rows = json.load(f)
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected one JSON array of rows")
            for index, row in enumerate(rows):
                yield f"{path}: item {index}", row
            return
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            yield f"{path}:{number}", row


def messages_of(value, where, field):
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: '{field}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: '{field}'[{i}] must be {{\"role\": str, \"content\": str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def with_system(messages, system_prompt):
    if system_prompt is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


# ---- SFT records ------------------------------------------------------------------------------

# Stands in for an assistant turn's content when a template is not prefix-stable (see
# assistant_spans): private-use characters that no template trims or escapes.
TURN_MARKER = "\ue000paft-assistant-turn\ue001"


def marked_turn(tok, messages, i, text):
    """(start, end) of assistant turn i's rendered content in text, or None.

    The conversation is rendered again with that turn's content replaced by TURN_MARKER: the text
    before the marker is what the template writes before the content and the text after it what
    follows, so the content is what lies between the two in the real text (as the template
    wrote it: trimmed, for instance). None when the template renders the marker other than once
    or the real text does not start and end like the marked one."""
    if TURN_MARKER in text:
        return None
    marked = list(messages)
    marked[i] = {**messages[i], "content": TURN_MARKER}
    rendered = tok.render_or_none(marked, add_generation_prompt=False)
    if rendered is None or rendered.count(TURN_MARKER) != 1:
        return None
    head, tail = rendered.split(TURN_MARKER)
    if len(head) + len(tail) > len(text) or not text.startswith(head) or not text.endswith(tail):
        return None
    return len(head), len(text) - len(tail)


def assistant_spans(tok, messages, text):
    """Character spans [start, end) of text that hold the assistant turns (content + end of turn).

    Render the conversation prefix by prefix: the text of messages[:i] plus the generation
    prompt ends where assistant turn i's content begins, and the text of messages[:i+1] ends
    where the turn ends. Templates that render a turn differently when more follow (so a prefix
    is not a prefix of the full text, e.g. Mistral's, which moves the system message) fall back to
    rendering the whole conversation with the turn's content replaced by a marker (marked_turn),
    plus the end-of-turn token when the template writes it right after the content. Searching
    the text for the content instead would find it wherever it first occurs: an answer "yes" to
    "Answer yes or no." would mask the user's word."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.render_or_none(messages[:i], add_generation_prompt=True)
        after = tok.render(messages[:i + 1], add_generation_prompt=False)
        if before is not None and text.startswith(before) and text.startswith(after) \
                and len(before) < len(after) and (not spans or spans[-1][1] <= len(before)):
            start, end = len(before), len(after)
        else:
            found = marked_turn(tok, messages, i, text)
            if found is None or (spans and found[0] < spans[-1][1]):
                raise DataError(f"the chat template does not render assistant turn {i} "
                                "where it can be found (template not prefix-stable)")
            start, end = found
            # The spaces the template writes right before the content belong to the reply's first
            # token in tokenizers that mark word starts ("[/INST] yes" -> "▁yes" starts at the
            # space), as they do in the prefix-by-prefix spans.
            while start > (spans[-1][1] if spans else 0) and text[start - 1] == " ":
                start -= 1
            eos = tok.special.get("eos_token")
            if eos and text.startswith(eos, end):
                end += len(eos)
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


def sft_batch(tok, rows, args, stats):
    """rows: [(where, row)] -> [(tokens, mask) or None]."""
    prepared = []
    for where, row in rows:
        if not isinstance(row, dict) or "messages" not in row:
            raise DataError(f"{where}: an SFT row needs a 'messages' list (UltraChat schema)")
        messages = with_system(messages_of(row["messages"], where, "messages"), args.system_prompt)
        try:
            text = tok.render(messages, add_generation_prompt=False)
            spans = assistant_spans(tok, messages, text)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        except Exception as e:  # jinja TemplateError and friends, e.g. raise_exception()
            raise DataError(f"{where}: the chat template failed: {e}") from None
        prepared.append((text, spans))

    out = []
    for (text, spans), enc in zip(prepared, tok.encode_batch([t for t, _ in prepared])):
        ids = list(enc.ids)
        mask = [0] * len(ids)
        s = 0
        for k, (begin, _) in enumerate(enc.offsets):
            while s < len(spans) and begin >= spans[s][1]:
                s += 1
            if s < len(spans) and spans[s][0] <= begin < spans[s][1]:
                mask[k] = 1
        ids, added = tok.add_bos(ids)
        mask = [0] * added + mask
        if len(ids) > args.max_len:
            stats["truncated"] += 1
            ids, mask = ids[:args.max_len], mask[:args.max_len]
        if sum(mask[1:]) == 0:  # mask[0] is never a target: nothing precedes it
            stats["dropped: no assistant tokens"] += 1
            out.append(None)
            continue
        out.append((ids, mask))
    return out


# ---- preference records -----------------------------------------------------------------------

def split_pref_row(where, row, system_prompt):
    """-> (prompt messages, chosen messages, rejected messages)."""
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise DataError(f"{where}: a preference row needs 'chosen' and 'rejected' "
                        "(UltraFeedback-binarized schema)")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, (str, list)):
            raise DataError(f"{where}: 'chosen' and 'rejected' are plain answers, so 'prompt' "
                            "is needed (text or messages)")
        prompt_msgs = (messages_of(prompt, where, "prompt") if isinstance(prompt, list)
                       else [{"role": "user", "content": prompt}])
        chosen_msgs = [{"role": "assistant", "content": chosen}]
        rejected_msgs = [{"role": "assistant", "content": rejected}]
    else:
        chosen_msgs = messages_of(chosen, where, "chosen")
        rejected_msgs = messages_of(rejected, where, "rejected")
        if isinstance(prompt, list):
            prompt_msgs = messages_of(prompt, where, "prompt")
            n = len(prompt_msgs)
            if chosen_msgs[:n] == prompt_msgs and len(chosen_msgs) > n:
                chosen_msgs = chosen_msgs[n:]
            if rejected_msgs[:n] == prompt_msgs and len(rejected_msgs) > n:
                rejected_msgs = rejected_msgs[n:]
        elif len(chosen_msgs) > 1:
            prompt_msgs = chosen_msgs[:-1]
            if rejected_msgs[:-1] != prompt_msgs:
                raise DataError(f"{where}: 'chosen' and 'rejected' differ before their last "
                                "message; they must share the prompt turns")
            chosen_msgs, rejected_msgs = chosen_msgs[-1:], rejected_msgs[-1:]
        elif isinstance(prompt, str):
            prompt_msgs = [{"role": "user", "content": prompt}]
        else:
            raise DataError(f"{where}: no prompt: 'prompt' is missing and 'chosen' holds a "
                            "single message")
    for name, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: the {name} completion must end with an assistant message")
    return with_system(prompt_msgs, system_prompt), chosen_msgs, rejected_msgs


def keep_end(ids, n, bos_kept):
    """The last n ids; a leading BOS (bos_kept) stays in front and counts towards n."""
    if len(ids) <= n:
        return ids
    if bos_kept and n >= 1:
        return ids[:1] + (ids[len(ids) - (n - 1):] if n > 1 else [])
    return ids[len(ids) - n:]


def truncate_pair(prompt, chosen, rejected, max_len, max_prompt_len, bos_kept):
    """TRL DPOTrainer's truncation (truncation_mode="keep_end"); returns the three lists."""
    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer > max_len:
        prompt = keep_end(prompt, max_prompt_len, bos_kept)
    if len(prompt) + longer > max_len:
        chosen = chosen[:max_len - max_prompt_len]
        rejected = rejected[:max_len - max_prompt_len]
    return prompt, chosen, rejected


def pref_batch(tok, rows, args, stats):
    texts, parts = [], []
    for where, row in rows:
        prompt_msgs, chosen_msgs, rejected_msgs = split_pref_row(where, row, args.system_prompt)
        try:
            prompt_text = tok.render(prompt_msgs, add_generation_prompt=True)
            completions = []
            for name, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
                full = tok.render(prompt_msgs + msgs, add_generation_prompt=False)
                if not full.startswith(prompt_text):
                    raise DataError(f"the chat template renders the prompt differently when the "
                                    f"{name} answer follows, so the completion cannot be cut out")
                completions.append(full[len(prompt_text):].rstrip())
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        except Exception as e:
            raise DataError(f"{where}: the chat template failed: {e}") from None
        texts += [prompt_text, prompt_text + completions[0], prompt_text + completions[1]]
        parts.append(len(prompt_text))

    encodings = tok.encode_batch(texts)
    out = []
    for r, boundary in enumerate(parts):
        prompt_enc, chosen_enc, rejected_enc = encodings[3 * r:3 * r + 3]
        prompt = list(prompt_enc.ids)
        completions = []
        for enc in (chosen_enc, rejected_enc):
            ids = list(enc.ids)
            if ids[:len(prompt)] == prompt:
                completions.append(ids[len(prompt):])
            else:
                # A token spans the prompt/completion boundary: keep the completion from the
                # first token that starts at or after the boundary.
                stats["boundary tokens merged"] += 1
                completions.append([t for t, (b, _) in zip(ids, enc.offsets) if b >= boundary])
        prompt, _ = tok.add_bos(prompt)
        chosen, rejected = completions
        if not prompt or not chosen or not rejected:
            stats["dropped: empty prompt or completion"] += 1
            out.append(None)
            continue
        before = (len(prompt), len(chosen), len(rejected))
        prompt, chosen, rejected = truncate_pair(prompt, chosen, rejected, args.max_len,
                                                 args.max_prompt_len,
                                                 bos_kept=tok.model_bos_id is not None
                                                 and prompt[:1] == [tok.model_bos_id])
        if (len(prompt), len(chosen), len(rejected)) != before:
            stats["truncated"] += 1
        out.append((prompt, chosen, rejected))
    return out


# ---- main -------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["sft", "pref"], required=True)
    p.add_argument("--input", nargs="+", required=True, help="JSONL / JSON / parquet files")
    p.add_argument("--tokenizer", required=True,
                   help="directory with tokenizer.json [+ tokenizer_config.json]")
    p.add_argument("--out-prefix", required=True, help="writes PREFIX_train.bin, PREFIX_val.bin")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest sequence in tokens (default 2048 sft, 1024 pref)")
    p.add_argument("--max-prompt-len", type=int, default=None,
                   help="pref: prompt tokens kept when cutting (default max-len / 2)")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="for the train/validation split")
    p.add_argument("--chat-template", default=None,
                   help="a jinja file to use instead of the model's, or 'zephyr'")
    p.add_argument("--system-prompt", default=None,
                   help="add this system message to conversations without one "
                        "(\"\" = the alignment-handbook recipe's empty system turn)")
    p.add_argument("--bos", choices=["auto", "always", "never"], default="auto")
    p.add_argument("--vocab-size", type=int, default=0,
                   help="vocab size to record (default: the tokenizer's; the model's may be "
                        "larger)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N rows (0 = all)")
    args = p.parse_args(argv)
    if args.max_len is None:
        args.max_len = 2048 if args.kind == "sft" else 1024
    if args.max_prompt_len is None:
        args.max_prompt_len = args.max_len // 2
    if args.max_len < 2:
        p.error("--max-len must be at least 2")
    if args.kind == "pref" and not 1 <= args.max_prompt_len < args.max_len:
        p.error("--max-prompt-len must be at least 1 and below --max-len")
    if not 0.0 <= args.val_fraction < 1.0:
        p.error("--val-fraction must be in [0, 1)")
    if args.limit < 0:
        p.error(f"--limit must be 0 (all rows) or a positive number of rows, not {args.limit}")
    if args.vocab_size < 0:
        p.error(f"--vocab-size must be 0 (the tokenizer's) or positive, not {args.vocab_size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    for path in args.input:
        if not os.path.isfile(path):
            fail(f"{path}: no such input file")
    tok = ChatTokenizer(args.tokenizer, args.chat_template, args.bos)
    vocab = max(tok.vocab_size, args.vocab_size)

    try:
        total = sum(count_rows(p) for p in args.input)
    except DataError as e:
        fail(e)
    if args.limit:
        total = min(total, args.limit)
    n_val = round(args.val_fraction * total)
    if args.val_fraction > 0 and n_val == 0 and total > 1:
        n_val = 1
    val_rows = set(random.Random(args.seed).sample(range(total), n_val)) if n_val else set()

    out_dir = os.path.dirname(args.out_prefix)
    if out_dir:
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            fail(f"{out_dir}: not a directory (the folder of --out-prefix {args.out_prefix})")
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            fail(f"{out_dir}: cannot create the output directory of --out-prefix: "
                 f"{e.strerror or e}")
    paths = {"train": f"{args.out_prefix}_train.bin"}
    if n_val:
        paths["val"] = f"{args.out_prefix}_val.bin"
    for path in paths.values():  # caught before any work, not between the two renames
        if os.path.isdir(path):
            fail(f"{path}: is a directory, cannot write the token data file there")
    stale_val = f"{args.out_prefix}_val.bin" if not n_val else None
    writers = {}
    stats = {"truncated": 0, "boundary tokens merged": 0, "dropped: no assistant tokens": 0,
             "dropped: empty prompt or completion": 0}
    written = {split: 0 for split in paths}
    make_batch = sft_batch if args.kind == "sft" else pref_batch

    def flush(batch):
        for (index, _), record in zip(batch, make_batch(tok, [b[1] for b in batch], args, stats)):
            if record is None:
                continue
            split = "val" if index in val_rows else "train"
            if args.kind == "sft":
                writers[split].add_sft(*record)
            else:
                writers[split].add_pref(*record)
            written[split] += 1

    # Nothing at PATH changes until every file is complete: the writers build temporaries
    # (PATH.tmp.<pid>), all are sealed, and only then are they renamed into place. Any failure
    # (bad row, no usable record, full disk, Ctrl-C) removes the temporaries and leaves the files
    # of an earlier run as they were, so a train file never pairs with a val file of another run.
    where = paths["train"]
    try:
        for split, path in paths.items():
            where = path
            writers[split] = paft_data.TokenDataWriter(path, args.kind, vocab)
        where = None
        index, batch = 0, []
        for path in args.input:
            for item in iter_rows(path):
                if index >= total:
                    break
                batch.append((index, item))
                index += 1
                if len(batch) == BATCH_ROWS:
                    flush(batch)
                    batch = []
        flush(batch)
        if written["train"] == 0:
            dropped = ", ".join(f"{k} {v}" for k, v in stats.items() if k.startswith("dropped") and v)
            raise DataError(
                f"{paths['train']}: no usable record for the training file ({total} rows read"
                + (f", {written['val']} to validation" if "val" in written else "")
                + (f"; {dropped}" if dropped else "") + "); nothing was written and existing "
                "files were left as they were")
        if "val" in written and written["val"] == 0:
            # An empty validation file would be scored as NLL 0 over 0 tokens: a perfect model.
            raise DataError(
                f"{paths['val']}: no usable record for the validation file (none of the {n_val} "
                "rows drawn for it yields one: they have nothing to train on); use a larger "
                "--val-fraction or another --seed; nothing was written and existing files were "
                "left as they were")
        for split, w in writers.items():
            where = w.path
            w.seal()
        for split, w in writers.items():
            where = w.path
            w.commit()
    except BaseException as e:  # leave no partial output behind, whatever stopped us
        for w in writers.values():
            w.abort()
        if isinstance(e, DataError):
            fail(e)
        if isinstance(e, OSError):
            fail(f"{where or e.filename or args.out_prefix + '_*.bin'}: cannot write: "
                 f"{e.strerror or e}; nothing was written")
        if isinstance(e, ValueError) and where is None:  # the writer's check of a record
            fail(e)
        raise

    print(f"prepare.py: {args.kind}, {total} rows, template {tok.template_name}, vocab {vocab}, "
          f"BOS {tok.bos_id if tok.bos_id is not None else 'none'}, max-len {args.max_len}"
          + (f", max-prompt-len {args.max_prompt_len}" if args.kind == "pref" else ""))
    for split, path in paths.items():
        w = writers[split]
        print(f"  {path}: {written[split]} records, {w.num_tokens} tokens")
    for what, count in stats.items():
        if count:
            print(f"  {what}: {count}")
    if stale_val and os.path.lexists(stale_val):
        # A validation file of an earlier run with this prefix no longer matches the new training
        # file (its rows may now be in it); a configuration naming it would evaluate on them.
        try:
            os.remove(stale_val)
            print(f"  {stale_val}: removed (left by an earlier run; this run writes no "
                  "validation file)")
        except OSError as e:
            print(f"prepare.py: warning: {stale_val}: an earlier run's validation file, which "
                  f"does not match the new training file, could not be removed ({e.strerror}); "
                  "delete it before using it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
