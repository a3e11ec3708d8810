"""Print the corpus table at the end of the run, so CI's log carries it."""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for table in getattr(config, "_portable_ep_corpus_tables", []):
        terminalreporter.section("real-models corpus (models/corpus.toml)")
        terminalreporter.write(table)
