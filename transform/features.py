"""Feature keys of the raw examples and of the Transform output, in one place.

Raw keys match the columns of the prepared Parquet files (``ingest/prepare.py``) and
the curated schema (``ingest/schema.pbtxt``). Vocabulary file names are part of the
contract with the Trainer, which reads them through ``TFTransformOutput``.
"""

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
USER_AGE = "user_age"
USER_GENDER = "user_gender"
USER_OCCUPATION = "user_occupation"
ITEM_GENRES = "item_genres"
ITEM_YEAR = "item_year"
SPAN = "span"  # the increment a row arrived in (ingest/prepare.py); not a model input

RAW_FEATURES = (USER_ID, ITEM_ID, RATING, TIMESTAMP, USER_AGE, USER_GENDER,
                USER_OCCUPATION, ITEM_GENRES, ITEM_YEAR, SPAN)
USER_FEATURES = (USER_AGE, USER_GENDER, USER_OCCUPATION)
ITEM_FEATURES = (ITEM_GENRES, ITEM_YEAR)

# Derived time features (computed from TIMESTAMP).
HOUR_OF_DAY = "hour_of_day"
DAY_OF_WEEK = "day_of_week"
TIME_SCALED = "time_scaled"

# Vocabulary files written by Transform; the Trainer maps indices back to raw IDs.
USER_VOCAB = "user_id_vocab"
ITEM_VOCAB = "item_id_vocab"
GENRE_VOCAB = "item_genres_vocab"
GENDER_VOCAB = "user_gender_vocab"
OCCUPATION_VOCAB = "user_occupation_vocab"

# Age groups of MovieLens 1M; -1 (unknown) falls below the first boundary, bucket 0.
AGE_BOUNDARIES = (0.0, 18.0, 25.0, 35.0, 45.0, 50.0, 56.0)
NUM_AGE_BUCKETS = len(AGE_BOUNDARIES) + 1


def transformed_name(key: str) -> str:
    """Name of the Transform output derived from raw feature ``key``."""
    return f"{key}_xf"

# SequenceGen's output (components/sequence_gen), read by the Trainer and the export.
WINDOW_USER = "user_xf"  # [1] user vocabulary index, -1 if out of vocabulary
WINDOW_ITEMS = "items"  # [max_history + 1] item indices, oldest first, -1 pads the front
WINDOW_SPAN = "newest_span"  # [1] newest span among the window's targets
WINDOW_TIME = "newest_time"  # [1] newest timestamp among the window's targets
WINDOW_TARGETS = "targets"  # [1] number of targets (items after the first position)
WINDOW_TIMES = "times"  # [max_history + 1] each item's timestamp, 0 pads (as the items)
SPANS_FILE = "spans.json"  # SequenceGen's span digests (also kept beside a model's towers)
HISTORY_USER = "user_id"  # raw user ID
HISTORY_ITEMS = "history"  # item indices, the newest max_history, oldest first
HISTORY_EXCLUDE = "exclude"  # item indices, distinct, newest first, up to exclusion_cap
HISTORY_LAST_TIME = "last_time"  # [1] timestamp of the user's newest interaction
ENTITY_COUNT = "count"  # rows of the train split per item or user index
PAD_INDEX = -1

# The towers' input keys, shared by the Trainer and the serving model (serving/savedmodel
# sits below trainer/ and must not import it).
MODEL_USER_ID = transformed_name(USER_ID)
MODEL_ITEM_ID = transformed_name(ITEM_ID)
MODEL_USER_FEATURES = tuple(transformed_name(k) for k in USER_FEATURES)
QUERY_FEATURES = (MODEL_USER_ID,) + MODEL_USER_FEATURES
CANDIDATE_FEATURES = (MODEL_ITEM_ID,) + tuple(transformed_name(k) for k in ITEM_FEATURES)
HISTORY = "history"  # the query tower's encoded-history input
# The query tower's [batch, 1] "as of when" input: log(1 + days) from the position's
# target to the newest train interaction while training, 0 ("now") when serving.
QUERY_AGE = "query_age"
DAY_SECONDS = 86400.0  # both time inputs count days; the evaluator's gap too
# The query tower's [batch, 1] "how long since": log(1 + days) from the history's newest
# item to the position's target while training; at serving, to the newest interaction
# the model knows (0 when the request itself carries history items).
QUERY_GAP = "query_gap"
