"""The data layer: the sample table, its sources (embedded digits, image folder + manifest CSV),
preparation into ``store/data`` and the one DataModule that serves every consumer.

Deleted samples are removed when the table is opened (:func:`open_data`), so no consumer
(training, replay, retain fine-tuning, calibration, behaviour reference sets) can ever read one.
"""

from pipeline.data.module import SampleSet, UmeData, open_data
from pipeline.data.prepare import prepare_data
from pipeline.data.table import SampleTable

__all__ = ["SampleSet", "SampleTable", "UmeData", "open_data", "prepare_data"]
