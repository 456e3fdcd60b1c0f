"""`speechalign listen`: an A/B listening test over the preference store (human preferences into the store)."""
