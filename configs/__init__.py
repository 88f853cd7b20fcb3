# Makes the configs importable as the package retrieval.configs (through the link
# retrieval/configs -> ../configs), which is how Hydra finds them in every install.
