"""The word-level example of the original ELMoEmbedding layer, line for
line (only the data helpers differ): ELMo "elmo" (frozen) -> Conv1D ->
GlobalMaxPooling1D -> Dropout -> Dense -> Dense.

    KERAS_BACKEND=torch python python/examples/sentiment_word.py [--epochs 5] [--model M]
"""

from keras.layers import Conv1D, Dense, Dropout, GlobalMaxPooling1D
from keras.models import Sequential
from keras.optimizers import Adam

import elmo
from elmo import ELMoEmbedding
from reviews import args, load

a = args()
idx2word, x_train, y_train, x_test, y_test = load(a.maxlen)
model_file = elmo.Model(a.model) if a.model else None

model = Sequential()
model.add(ELMoEmbedding(idx2word=idx2word, output_mode="elmo", trainable=False, model=model_file))
model.add(Conv1D(filters=50, kernel_size=3, padding='same', activation='relu'))
model.add(GlobalMaxPooling1D())
model.add(Dropout(0.5))
model.add(Dense(50, activation='relu'))
model.add(Dense(1, activation='sigmoid'))
model.compile(loss='binary_crossentropy', optimizer=Adam(learning_rate=0.001), metrics=['accuracy'])
model.fit(x_train, y_train, batch_size=2, epochs=a.epochs, validation_data=(x_test, y_test), verbose=2)
