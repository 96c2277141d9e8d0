"""Built-in data: synthetic store sessions with a known right answer."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

# Intent journeys: a shopper on a journey tends to view its products in order.
_JOURNEYS: Dict[str, List[str]] = {
    "coffee": ["espresso machine", "burr grinder", "coffee scale", "whole-bean coffee", "milk frother", "tamper"],
    "running": ["running shoes", "running socks", "sports watch", "energy gels", "foam roller", "hydration vest"],
    "baby": ["stroller", "car seat", "baby monitor", "diapers", "baby wipes", "changing mat"],
    "camping": ["tent", "sleeping bag", "camping stove", "headlamp", "water filter", "trekking poles"],
    "home office": ["standing desk", "office chair", "monitor arm", "usb-c dock", "webcam", "desk lamp"],
    "gaming": ["gaming console", "wireless controller", "headset", "charging stand", "racing wheel", "game pass card"],
    "baking": ["stand mixer", "baking tray", "silicone mat", "bread flour", "proofing basket", "bench scraper"],
    "cycling": ["road bike", "bike helmet", "bike lights", "bike lock", "cycling gloves", "repair kit"],
    "skincare": ["cleanser", "toner", "serum", "moisturiser", "sunscreen", "face mask"],
    "photography": ["mirrorless camera", "prime lens", "memory card", "tripod", "camera bag", "lens filter"],
}
_BRANDS = ["Acme", "Nordic", "Vela", "Orbit", "Kite"]


def synthetic_store(n_sessions: int = 5000, random_state: int = 0, noise: float = 0.15,
                    min_len: int = 3, max_len: int = 6) -> Tuple[List[List[int]], Dict[int, str]]:
    """Synthetic e-commerce sessions over named products.

    Each session follows one intent journey (e.g. espresso machine -> burr grinder ->
    coffee scale -> whole-bean coffee), one brand's products, from a random step onwards
    (never past the journey's end), with ``noise`` of the views replaced by random
    products.  So a trained model has a
    known right answer: the next step of the journey.

    Returns (sessions as lists of product ids, {product id: product name}).
    """
    if not isinstance(n_sessions, (int, np.integer)) or n_sessions < 1:
        raise ValueError(f"n_sessions must be a positive integer, got {n_sessions!r}")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise!r}")
    if not 2 <= min_len <= max_len or min_len > 6:
        raise ValueError(f"need 2 <= min_len <= max_len and min_len <= 6, got min_len={min_len}, max_len={max_len}")
    rng = np.random.default_rng(random_state)
    names: Dict[int, str] = {}
    journeys: List[List[int]] = []
    pid = 1000
    for theme, steps in _JOURNEYS.items():
        for brand in _BRANDS:
            ids = []
            for step in steps:
                names[pid] = f"{brand} {step}"
                ids.append(pid)
                pid += 1
            journeys.append(ids)
    all_ids = np.array(sorted(names))
    sessions: List[List[int]] = []
    for _ in range(int(n_sessions)):
        j = journeys[rng.integers(len(journeys))]
        length = int(rng.integers(min_len, min(max_len, len(j)) + 1))
        start = int(rng.integers(0, len(j) - length + 1))
        s = list(j[start:start + length])
        for k in range(length):
            if rng.random() < noise:
                s[k] = int(all_ids[rng.integers(all_ids.size)])
        sessions.append(s)
    return sessions, names
