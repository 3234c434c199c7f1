"""The base of every error bertforge raises for bad input; the CLI prints these as one clear line."""


class BertforgeError(Exception):
    """Bad input or state, with a message that names the file, the line and the fix."""
