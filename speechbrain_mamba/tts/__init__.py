"""Zero-shot text-to-speech with codec language models (VALL-E and VALL-M):
codec interface, text front end, sampling, generation, the LibriTTS recipe,
export and the inference interface."""
