"""Agreement between model answers: JSON field votes, text similarity, majority and outliers."""

from __future__ import annotations

from caelum_mcp.tools.compare import agreement as agree


def test_json_answers_are_compared_field_by_field() -> None:
    found = agree.json_agreement(
        {
            "a": {"city": "Paris", "population": 2.1, "tags": ["x"]},
            "b": {"city": " paris ", "population": 2.1, "tags": ["x"]},
            "c": {"city": "Paris", "population": 2.1},
            "d": {"city": "Lyon", "population": 0.5, "tags": ["y"]},
        }
    )
    votes = {v.field: v for v in found.fields}
    assert votes["city"].value == '"paris"' and votes["city"].agreeing == 3 and votes["city"].dissenting == ("d",)
    assert votes["tags"].dissenting == ("c", "d")  # c left it out
    assert found.scores["a"] == 1.0 and found.scores["d"] == 0.0
    assert found.outliers == ("d",) and set(found.majority) == {"a", "b", "c"}


def test_text_majority_flags_the_answer_that_says_something_else() -> None:
    names = ["m1", "m2", "m3", "m4"]
    texts = ["Paris is the capital of France.", "The capital of France is Paris.", "Paris, France.", "It is Lyon."]
    found = agree.majority(names, agree.word_overlap_matrix(texts), agree.WORD_THRESHOLD)
    assert found.outliers == ("m4",)
    assert found.scores["m1"] > found.scores["m4"]


def test_embeddings_and_small_groups() -> None:
    vectors = [[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]
    matrix = agree.cosine_matrix(vectors)
    assert abs(matrix[0][0] - 1.0) < 1e-9 and matrix[0][2] == 0.0
    found = agree.majority(["a", "b", "c"], matrix, agree.EMBEDDING_THRESHOLD)
    assert found.outliers == ("c",)
    pair = agree.majority(["a", "c"], agree.cosine_matrix([vectors[0], vectors[2]]), agree.EMBEDDING_THRESHOLD)
    assert pair.outliers == () and pair.majority == () and pair.overall == 0.0  # two answers: no majority
    split = agree.majority(["a", "b", "c", "d"], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], 0.8)
    assert split.outliers == ()  # all different: nobody is the odd one out
