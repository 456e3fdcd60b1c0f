"""The errors the command line turns into an exit status and a one-line message. They live here, apart from
the flows that raise them, so that a command that fails early (or `speechalign config`) does not import
torch, transformers and Prefect to name them."""


class SetupError(RuntimeError):
    """Something a command needs is not there yet; the message says which command makes it."""


class CampaignStopped(RuntimeError):
    """The collapse guard (guard.action = "stop") stopped the campaign; the message says why and how to go on."""
