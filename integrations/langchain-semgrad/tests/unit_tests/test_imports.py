from langchain_semgrad import __all__

EXPECTED_ALL = [
    "AsyncSemGradCallbackHandler",
    "GuardResult",
    "LowConfidenceError",
    "ReviewItem",
    "ReviewQueue",
    "ScoredRun",
    "SemGradCallbackHandler",
    "SemGradGuard",
    "SemGradMiddleware",
    "__version__",
]


def test_all_imports() -> None:
    assert sorted(EXPECTED_ALL) == sorted(__all__)
    assert __all__ == sorted(__all__)
