"""Default feedback prompts for real text-to-image models (30 contents, the size of StyleDrop's Table S2 list).

The paper's exact Table S2 wording was not available to us offline; this is our own list of 30 everyday subjects
of the same kind (single objects, animals, scenes), each sampled as "{content} in {style} style".
"""

TABLE_S2_CONTENT = [
    "A banana",
    "A bottle",
    "A bowl of fruit",
    "A bridge",
    "A butterfly",
    "A cabin in the woods",
    "A cake",
    "A castle",
    "A cat",
    "A chair",
    "A city skyline",
    "A clock",
    "A coffee cup",
    "A crown",
    "A dog",
    "A dragon",
    "A flower",
    "A fox",
    "A guitar",
    "A hot air balloon",
    "A house",
    "A lighthouse",
    "A mountain",
    "An owl",
    "A robot",
    "A sailboat",
    "A teapot",
    "A tree",
    "A bicycle",
    "The letter A",
]
