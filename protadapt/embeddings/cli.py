"""`protadapt embed`: its arguments and its handler (the CLI's one entry for the embeddings package)."""

from __future__ import annotations

import argparse


def add_embed_command(commands) -> None:
    parser = commands.add_parser("embed", help="pooled (and per-residue) embeddings of a FASTA/CSV file")
    parser.add_argument("input", help="FASTA, CSV or TSV of sequences")
    parser.add_argument("-o", "--output", required=True, help="file to write: .npz, .h5 (needs h5py) or .parquet (needs pyarrow)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", help="fair-esm name, .pt file, HF directory, or tiny")
    source.add_argument("--run", help="a run directory: embed with its trained adapters merged in")
    parser.add_argument("--random-init", action="store_true", help="the backbone's architecture with random weights")
    parser.add_argument("--layers", default="-1", help="comma-separated layers: 0 embeddings … N last, -1 the last")
    parser.add_argument("--pooling", default="mean", help="mean, bos, or both as mean,bos")
    parser.add_argument("--per-residue", action="store_true", help="also every residue's vector (.npz/.h5)")
    parser.add_argument("--truncate", action="store_true", help="truncate over-long sequences instead of failing")
    parser.add_argument("--batch-size", type=int, help="sequences per batch (default 32)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, …")
    parser.set_defaults(handler=embed)


def embed(args: argparse.Namespace) -> int:
    from protadapt.adapters import merge_adapters
    from protadapt.backbones import load_backbone
    from protadapt.data.io import read_sequences
    from protadapt.embeddings.command import embed_file
    from protadapt.inference import pick_device
    from protadapt.model import ProteinPredictor

    if args.run:
        predictor, _ = ProteinPredictor.load(args.run)
        merge_adapters(predictor)
        backbone = predictor.backbone
    else:
        backbone = load_backbone(args.backbone, random_init=args.random_init)
    frame = read_sequences(args.input, require_labels=False, truncate=args.truncate, max_length=backbone.max_residues)
    backbone.to(pick_device(args.device))
    layers = [int(layer) for layer in args.layers.split(",")]
    options = {} if args.batch_size is None else {"batch_size": args.batch_size}
    output = embed_file(backbone, frame, args.output, layers, args.pooling.split(","), args.per_residue, **options)
    print(f"wrote embeddings of {len(frame)} sequences to {output}")
    return 0
