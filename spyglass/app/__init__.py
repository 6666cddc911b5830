"""What a person touches: the Streamlit app and the ``spyglass`` command line."""
