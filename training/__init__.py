"""Fine-tuning and evaluation of genre models for genretag.

``data`` (datasets and splits) → ``train`` (the Hugging Face Trainer) → ``evaluate`` (the checkpoint run
through the tagger itself) → ``metrics`` (numbers, plots, model card). ``cli`` holds the commands.
"""
