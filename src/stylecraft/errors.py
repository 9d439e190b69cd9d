"""The one exception type users see: a problem with their input, phrased as the problem and its fix."""


class StylecraftError(ValueError):
    """Bad input or an unusable file. The message names the problem and how to fix it, in one line."""
