"""Item ids on the command line: ``--session`` and ``--exclude`` (comma-separated),
``--candidates`` / ``--new-products`` (the items to rank) and ``--denylist`` (never these),
the long ones also as ``@FILE``; ids a model does not know are named on stderr, and so is
how it reads a session's new products (``_say_new_products``)."""
from __future__ import annotations

import argparse
import sys
from typing import Any, List

import numpy as np


def _parse_ids(text: str, model, flag: str, from_file: bool = False) -> List[Any]:
    """Comma-separated ids, as integers when the model's ids are integers.  ``from_file``:
    ``@PATH`` reads them from a file, comma- or line-separated (a list too long for a
    command line: a category, the out-of-stock items)."""
    from fastsasrec.cli import CLIError

    if from_file and text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8-sig") as f:  # a BOM (a spreadsheet's export) dropped
                body = f.read()
        except OSError as e:
            raise CLIError(f"{flag} {text!r}: cannot read {text[1:]!r}: {e.strerror or e}") from None
        lines = [t.strip() for t in body.replace(",", "\n").splitlines()]
        ids = [t for t in lines if t]
        if not ids:
            raise CLIError(f"{flag} {text!r}: the file holds no item id")
        return _parse_ids(",".join(ids), model, f"{flag} ({text[1:]})")
    tokens = [t.strip() for t in text.split(",")]
    if not text.strip() or any(t == "" for t in tokens):
        raise CLIError(f"{flag} must be comma-separated item ids like 12,40,7, got {text!r}")
    if model.item_ids.dtype.kind in "iu":
        for t in tokens:
            if not (t.isdigit() and t.isascii() and (t == "0" or t[0] != "0")):
                raise CLIError(f"{flag}: {t!r} is not an integer written as digits with no sign or "
                               f"leading zero, and this model's item ids are integers (got {text!r})")
        ids = [int(t) for t in tokens]
        big = next((i for i in ids if i >= 2**63), None)
        if big is not None:
            raise CLIError(f"{flag}: {big} is beyond 64 bits; integer item ids fit in int64")
        return ids
    return tokens


def _candidates(args: argparse.Namespace, model) -> Any:
    """The items ``--candidates`` or ``--new-products`` say to rank (None: the catalogue);
    ids the model does not know are named on stderr and dropped, none known is an error."""
    from fastsasrec.cli import CLIError

    if args.candidates is not None and args.new_products:
        raise CLIError("--candidates and --new-products each say which items to rank: give one")
    if args.new_products:
        cand = model.item_ids[np.asarray(model.popularity_) == 0]
        if cand.size == 0:
            raise CLIError("--new-products: every item of this model has training events; add new "
                           "products with `fastsasrec update ... --item-features`")
        return cand
    if args.candidates is None:
        return None
    cand = _parse_ids(args.candidates, model, "--candidates", from_file=True)
    inside = np.isin(np.asarray(cand), model.item_ids)
    if not inside.any():
        raise CLIError(f"--candidates: none of {_shown(repr(args.candidates))} is in the model's catalogue")
    if not inside.all():
        print("note: --candidates not in the model's catalogue, ignored: "
              + _shown(", ".join(str(x) for x, k in zip(cand, inside) if not k)), file=sys.stderr)
    return cand


def _denylist(args: argparse.Namespace, model) -> Any:
    """``--denylist`` (None when not given); unknown ids are named on stderr."""
    if args.denylist is None:
        return None
    deny = _parse_ids(args.denylist, model, "--denylist", from_file=True)
    inside = np.isin(np.asarray(deny), model.item_ids)
    if not inside.all():
        print("note: --denylist not in the model's catalogue, ignored: "
              + _shown(", ".join(str(x) for x, k in zip(deny, inside) if not k)), file=sys.stderr)
    return deny


def _shown(text: str, limit: int = 200) -> str:
    """``text`` for a message, cut at ``limit`` characters (a list read from a file)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def _add_candidates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidates", metavar="IDS",
                   help="comma-separated item ids, or @FILE (one per line): rank only these (each "
                        "with its score in the whole catalogue's ranking)")
    p.add_argument("--new-products", action="store_true",
                   help="rank only the items with no training events (products added by "
                        "update --item-features): a 'new for you' slot")


def _say_new_products(model: Any, session: List[Any]) -> None:
    """Says how the model reads the session's new products (no events in training), as it
    says which ids it ignored: what ``_new_products.read_items`` gives for it."""
    from fastsasrec import _new_products

    state = model._fitted()
    mask = _new_products.unread(state)
    if mask is None:
        return
    given = state.encode(np.asarray(session))
    internal = given[given > 0]
    read, _ = _new_products.read_items(state, internal, np.array([0, internal.size], dtype=np.int64))
    if read is internal:
        return
    names = dict(zip(internal.tolist(), (x for x, i in zip(session, given.tolist()) if i)))
    if read.size < internal.size:
        left = [names[i] for i in internal.tolist() if mask[i]]
        print("note: new products (no events in training) are not read beside the session's "
              f"other items: {', '.join(map(str, left))}", file=sys.stderr)
        return
    pairs = list(zip(internal.tolist(), read.tolist()))
    read_as = [f"{names[i]} is read as {state.item_ids[j - 1]}" for i, j in pairs if j != i]
    own = [str(names[i]) for i, j in pairs if j == i and mask[i]]
    said = ((", ".join(read_as) + ", the item with events sharing the most of its features")
            if read_as else "")
    if own:
        said += ("; " if said else "") + ", ".join(own) + (" shares" if len(own) == 1 else " share") + \
            " no feature value with an item with events: read by its features"
    if said:
        print("note: a session of new products alone (no events in training): " + said, file=sys.stderr)
