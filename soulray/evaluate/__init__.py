"""The evaluation stage: next-turn generation on held-out samples, the paper's metrics, an LLM judge.

    samples.py   held-out samples of a published version (split by question_id, seeded choice)
    generate.py  generation from a Hugging Face checkpoint in a Ray actor pool (reproducible sampling)
    llm.py       generation and judging through an OpenAI-compatible API (soulray.llm)
    metrics.py   BLEU-1..4 (characters), ROUGE-1/2/L (jieba words), distinct-n, length
    judge.py     the rubric, the rating parser, means with intervals, agreement between judge runs
    report.py    Table 1 layout beside the paper's rows, a PNG plot
The job's story is soulray/evaluation.py.
"""
