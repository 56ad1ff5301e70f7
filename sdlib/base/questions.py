"""The question set: the 10 questions asked about every clip (the original study's instruction set), and the kind
of answer each asks for. The simulated world answers them (:mod:`sdlib.world.qa`); DSEC clips are asked them."""

QUESTIONS: tuple[str, ...] = (
    "What are the key elements in this scene?",
    "Can you elaborate on the elements of the scene provided?",
    "What is this scene about?",
    "What is the layout of the road in the scene?",
    "What type of vehicles are present in the scene and how are they positioned?",
    "What do you think is going on in this scene?",
    "What elements are present in the scene?",
    "What do you see happening in this scene?",
    "Describe the following scene.",
    "What types of vehicles are present in the scene and how are they positioned?",
)
# The kind of answer each question asks for (the book reports divergence and acceptance per type).
QUESTION_TYPES: tuple[str, ...] = ("elements", "elements", "summary", "layout", "vehicles", "activity", "elements",
                                   "activity", "summary", "vehicles")
