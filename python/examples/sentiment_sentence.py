"""The sentence-level example of the original ELMoEmbedding layer, line for
line (only the data helpers differ): ELMo "default" -> Dropout -> Dense -> Dense.

    KERAS_BACKEND=jax python python/examples/sentiment_sentence.py [--epochs 5] [--model M]
"""

from keras.layers import Dense, Dropout
from keras.models import Sequential
from keras.optimizers import Adam

import elmo
from elmo import ELMoEmbedding
from reviews import args, load

a = args()
idx2word, x_train, y_train, x_test, y_test = load(a.maxlen)
model_file = elmo.Model(a.model) if a.model else None

model = Sequential()
model.add(ELMoEmbedding(idx2word=idx2word, output_mode="default", trainable=True, model=model_file))
model.add(Dropout(0.5))
model.add(Dense(50, activation='relu'))
model.add(Dense(1, activation='sigmoid'))
model.compile(loss='binary_crossentropy', optimizer=Adam(learning_rate=0.001), metrics=['accuracy'])
model.fit(x_train, y_train, batch_size=2, epochs=a.epochs, validation_data=(x_test, y_test), verbose=2)
