"""Train a GPT-style TransformerAR on text, or generate from a trained one.

    python recipes/train_transformer.py --max-steps 2000                  # the stdlib's own source
    python recipes/train_transformer.py --text-files ../shared/data/tinyshakespeare/input.txt \\
        --tokenizer char --max-steps 5000 --out runs/shakespeare
    python recipes/train_transformer.py --hf-dataset path/or/name --hf-column text --tokenizer bpe
    python recipes/train_transformer.py --max-steps 4000 --resume last    # continue the run in --out
    python recipes/train_transformer.py --generate --prompt "def main(" \\
        --temperature 0.8 --top-p 0.9 --n-samples 4 --max-length 128     # sample from the last checkpoint

Training windows start with BOS. The run directory (--out, default runs/transformer)
receives TensorBoard logs, checkpoints, the tokenizer (tokenizer.json), the model config
(model_config.json, what --generate reads back) and every resolved flag (config.yaml,
which --config takes). A fresh run refuses an --out that holds one: --resume last
continues it, --overwrite replaces it.
"""

from __future__ import annotations

import os
import sys
import tempfile

from flax import nnx

from artrainer.callbacks import SampleGenerator
from artrainer.checkpointing import load_weights
from artrainer.cli import (TrainingRun, add_trainer_arguments, check_enough_examples, check_flag,
                           check_sampling_flags, parse_recipe_args, read_run_config, recipe_parser, run_recipe,
                           start_processes, train_and_val_loaders)
from artrainer.data.text import (BPETokenizer, ByteTokenizer, CharTokenizer, load_text_dataset,
                                 UndecodableTextError, read_text_files, stdlib_corpus,
                                 token_windows)
from artrainer.models import TransformerAR, TransformerConfig

TOKENIZERS = {"byte": ByteTokenizer, "char": CharTokenizer, "bpe": BPETokenizer}


def make_parser():
    parser = recipe_parser(__doc__)
    data = parser.add_argument_group("data (default: the Python standard library's own source)")
    data.add_argument("--text-files", nargs="+", default=None, help="train on these text files")
    data.add_argument("--encoding", default="utf-8", help="encoding of --text-files")
    data.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"],
                      help="what to do with bytes --encoding cannot decode: stop (strict), or replace / drop them")
    data.add_argument("--hf-dataset", default=None, help="a Hugging Face dataset: saved dir, .txt path or hub name")
    data.add_argument("--hf-split", default="train", help="split of --hf-dataset")
    data.add_argument("--hf-column", default="text", help="text column of --hf-dataset")
    data.add_argument("--corpus-bytes", type=int, default=4_000_000, help="size of the default stdlib corpus")
    data.add_argument("--tokenizer", choices=sorted(TOKENIZERS), default="byte",
                      help="byte: 256 bytes + BOS/EOS/PAD; char: the corpus's characters; bpe: trained here")
    data.add_argument("--bpe-vocab", type=int, default=1024, help="vocabulary size of a trained BPE tokenizer")
    data.add_argument("--val-fraction", type=float, default=0.1, help="share of the windows held out, in (0, 1)")
    data.add_argument("--batch-size", type=int, default=32, help="windows per step (the global batch)")
    model = parser.add_argument_group("model")
    model.add_argument("--seq-len", "--block-size", type=int, default=128,
                       help="tokens per training window: the model's context")
    model.add_argument("--hidden-dim", "--n-embd", type=int, default=128, help="width of the residual stream")
    model.add_argument("--num-layers", "--n-layer", type=int, default=4, help="Transformer blocks")
    model.add_argument("--num-heads", "--n-head", type=int, default=4, help="attention heads per block")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout rate in [0, 1)")
    model.add_argument("--rotary", action="store_true", help="rotary instead of learned positions")
    sampling = parser.add_argument_group("sampling (--generate, and periodic samples while training)")
    sampling.add_argument("--generate", action="store_true", help="sample from the run in --out instead of training")
    sampling.add_argument("--checkpoint", default=None, help="checkpoint dir for --generate (default: <out>/checkpoints)")
    sampling.add_argument("--prompt", default=None, help="text to continue")
    sampling.add_argument("--truncate-prompt", action="store_true",
                          help="keep the last tokens of a prompt too long for --max-length instead of refusing it")
    sampling.add_argument("--n-samples", "--num-return-sequences", type=int, default=4, help="samples to draw")
    sampling.add_argument("--max-length", type=int, default=None,
                          help="tokens per sample, prompt included, at most the run's --seq-len (unset: --seq-len)")
    sampling.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    sampling.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    sampling.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of mass p")
    sampling.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL's penalty; 1 = none")
    sampling.add_argument("--stop-at-eos", action="store_true", help="end samples at the tokenizer's EOS")
    sampling.add_argument("--beam-size", "--num-beams", type=int, default=None, help="beam search instead of sampling")
    sampling.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length**penalty")
    sampling.add_argument("--no-cache", action="store_true", help="recompute the prefix every step (slow)")
    sampling.add_argument("--sample-every", type=int, default=None, help="log samples every N training steps")
    add_trainer_arguments(parser, default_out=os.path.join("runs", "transformer"))
    return parser


def parse_args(parser, argv) -> object:
    args = parse_recipe_args(parser, argv, default_max_steps=2000)
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction {args.val_fraction} must lie in (0, 1)")
    check_sampling_flags(args)
    check_flag(args, "corpus_bytes", "an int >= 0", lambda n: n >= 0)
    check_flag(args, "beam_size", "an int >= 1 (leave --beam-size out to sample)", lambda n: n >= 1)
    check_flag(args, "n_samples", "an int >= 1", lambda n: n >= 1)
    if args.generate:  # The run's --seq-len bounds it; generate() checks that once the run is read.
        check_flag(args, "max_length", "an int >= 2", lambda n: n >= 2)
    else:
        check_flag(args, "max_length", f"an int in [2, --seq-len={args.seq_len}]",
                   lambda n: 2 <= n <= args.seq_len)
    return args


def load_text(args) -> str:
    if args.text_files:
        try:
            return read_text_files(args.text_files, encoding=args.encoding, errors=args.errors)
        except UndecodableTextError as exc:
            raise ValueError(f"{exc}; give its --encoding (e.g. latin-1), or --errors replace") from None
    if args.hf_dataset:
        return "\n".join(load_text_dataset(args.hf_dataset, split=args.hf_split, column=args.hf_column))
    return stdlib_corpus(args.corpus_bytes)


def make_tokenizer(args, text: str):
    if args.tokenizer == "char":
        return CharTokenizer.fit(text)
    if args.tokenizer == "bpe":
        return BPETokenizer.train([text], args.bpe_vocab)
    return ByteTokenizer()


def tokenizer_json(tokenizer) -> str:
    """The tokenizer's file, as text (so a resume can compare it before writing)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        tokenizer.save(path)
        with open(path, encoding="utf-8") as file:
            return file.read()


def build_model(config: dict, seed: int) -> TransformerAR:
    """The model of a run's ``model_config.json``: the recipe's ``tokenizer`` name, and the rest
    TransformerConfig fields (those left out, e.g. by older runs, keep their defaults)."""
    model_config = {key: value for key, value in config.items() if key != "tokenizer"}
    return TransformerAR(config=TransformerConfig(**model_config), rngs=nnx.Rngs(seed))


def sampling_kwargs(args, tokenizer) -> dict:
    kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  repetition_penalty=args.repetition_penalty)
    if args.stop_at_eos:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    return kwargs


def train(args, argv) -> int:
    sampler = None
    if args.sample_every:  # built now, so its flags are checked before any data is read
        sampler = SampleGenerator(args.sample_every, args.n_samples, quality_metrics=True,
                                  generate_kwargs={"max_length": args.max_length or args.seq_len})
    with TrainingRun(args, script=__file__, argv=argv, extra_callbacks=[sampler] if sampler else []) as run:
        text = load_text(args)
        tokenizer = make_tokenizer(args, text)
        windows = token_windows(tokenizer.encode(text), args.seq_len, bos_token_id=tokenizer.bos_token_id)
        n_val = max(1, int(len(windows) * args.val_fraction))
        train_windows, val_windows = windows[:-n_val], windows[-n_val:]
        check_enough_examples(len(train_windows), args, f"training windows of --seq-len {args.seq_len} tokens the "
                              "text gives", "--seq-len, or give more text")
        print(f"{len(train_windows)} training and {len(val_windows)} validation windows of {args.seq_len} "
              f"{args.tokenizer} tokens", file=sys.stderr)
        config = {"tokenizer": args.tokenizer, "vocab_size": tokenizer.vocab_size, "sequence_length": args.seq_len,
                  "hidden_dim": args.hidden_dim, "num_layers": args.num_layers, "num_heads": args.num_heads,
                  "dropout_rate": args.dropout, "position_encoding": "rotary" if args.rotary else "learned",
                  "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
        model = build_model(config, args.seed)  # before writing: a bad model flag fails here
        run.save_configs(config, {"tokenizer.json": tokenizer_json(tokenizer)})
        train_data, val_data = train_and_val_loaders(args, {"sequences": train_windows}, {"sequences": val_windows})
        model.tokenizer = tokenizer  # log_samples decodes with it
        if sampler is not None:
            sampler.generate_kwargs.update(sampling_kwargs(args, tokenizer))
        return run.fit(model, train_data, val_data)


def prompt_ids(args, tokenizer, max_length: int) -> list[int]:
    """BOS + the encoded ``--prompt``: refused when it leaves no room under ``max_length``,
    or (``--truncate-prompt``) cut to its last tokens."""
    ids = tokenizer.encode(args.prompt) if args.prompt else []
    room = max_length - 2  # BOS, and at least one new token
    if len(ids) > room:
        if not args.truncate_prompt:
            raise ValueError(f"--prompt is {len(ids)} tokens, and --max-length {max_length} leaves room for at "
                             f"most {room} (BOS and one new token take the rest); shorten it, or pass "
                             "--truncate-prompt to keep its last tokens")
        ids = ids[len(ids) - room:]
    return [tokenizer.bos_token_id] + ids


def generate(args) -> int:
    config = read_run_config(args.out)
    context = config["sequence_length"]
    max_length = context if args.max_length is None else args.max_length
    if max_length > context:
        raise ValueError(f"--max-length {max_length} exceeds the context of the run in --out {args.out} "
                         f"(trained with --seq-len {context}); the largest allowed is {context}")
    tokenizer = TOKENIZERS[config["tokenizer"]].load(os.path.join(args.out, "tokenizer.json"))
    prompt = prompt_ids(args, tokenizer, max_length)
    model = build_model(config, args.seed)
    step = load_weights(model, args.checkpoint or os.path.join(args.out, "checkpoints"))
    rngs = nnx.Rngs(sample=args.seed)
    if args.beam_size is not None:
        sequences, scores = model.beam_search(args.beam_size, max_length, prompt=prompt,
                                              length_penalty=args.length_penalty,
                                              eos_token_id=tokenizer.eos_token_id if args.stop_at_eos else None)
        labels = [f"score {float(s):.3f}" for s in scores]
    else:
        sequences = model.generate(args.n_samples, max_length, prompt=prompt, rngs=rngs,
                                   use_cache=not args.no_cache, **sampling_kwargs(args, tokenizer))
        labels = [f"sample {i}" for i in range(len(sequences))]
    print(f"# checkpoint step {step}", file=sys.stderr)
    for label, row in zip(labels, sequences.tolist()):
        print(f"--- {label}\n{tokenizer.decode(row)}")
    return 0


def _main(argv) -> int:
    parser = make_parser()
    args = parse_args(parser, argv)
    start_processes(args)
    return generate(args) if args.generate else train(args, argv)


def main(argv=None) -> int:
    return run_recipe(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
